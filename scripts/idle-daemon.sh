#!/usr/bin/env bash
# Measures the idle daemon: CPU share and resident memory between runs.
# usage: scripts/idle-daemon.sh [SECONDS]   (default 30; builds the release binary first)
# It starts `run` on the bundled directory with a schedule that never fires after the first
# (immediate) run, waits 5 s, samples /proc for SECONDS, and stops the daemon with SIGTERM.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds=${1:-30}
cargo build --release --quiet
bin=$(realpath target/release/socialtalent-sync)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cp examples/directory.json "$work/"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/config.toml" <<TOML
[source]
kind = "file"
[source.file]
path = "directory.json"
[target]
base_url = "http://127.0.0.1:9/v2"
token = "unused-because-nothing-is-in-scope"
[reconcile]
read_back = false
[schedule]
cron = "0 0 1 1 *"
full_cron = "0 0 1 1 *"
[state]
path = "state"
[observability]
listen = "127.0.0.1:$port"
[scope]
when = "false"
[mapping]
userName = "{{ user.email | lower }}"
TOML
"$bin" --config "$work/config.toml" run 2>"$work/daemon.log" &
pid=$!
sleep 5
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
t0=$(ticks); sleep "$seconds"; t1=$(ticks)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
kill -TERM "$pid"; wait "$pid"
python3 - "$t0" "$t1" "$(getconf CLK_TCK)" "$seconds" "$rss" "$hwm" <<'PY'
import sys
t0, t1, tck, secs, rss, hwm = map(float, sys.argv[1:])
cpu = (t1 - t0) / tck / secs * 100
print(f"idle_daemon_cpu            {cpu:8.3f} % of a core   target < 1     {'PASS' if cpu < 1 else 'MISS'}")
print(f"idle_daemon_rss            {rss/1024:8.1f} MiB          target < 30    {'PASS' if rss/1024 < 30 else 'MISS'}")
print(f"idle_daemon_peak_rss       {hwm/1024:8.1f} MiB")
PY
