#!/usr/bin/env bash
# Checks systemd/socialtalent-sync.service offline: `systemd-analyze verify` must print nothing
# (it only warns on bad values and still exits 0, so any output is a failure) and
# `systemd-analyze security --offline=yes` must rate the exposure at 1.5 or lower.
# usage: scripts/check-systemd-unit.sh [BINARY]   (default: target/debug/socialtalent-sync)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
binary=$(realpath "${1:-target/debug/socialtalent-sync}")
[ -x "$binary" ] || { echo "no binary at $binary; build first" >&2; exit 1; }
command -v systemd-analyze >/dev/null || { echo "systemd-analyze is missing (apt-get install systemd)" >&2; exit 1; }

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
unit="$work/socialtalent-sync.service"
# verify checks that ExecStart exists: point it at the built binary.
sed "s|/usr/bin/socialtalent-sync|$binary|" systemd/socialtalent-sync.service > "$unit"

out=$(systemd-analyze verify "$unit" 2>&1) || { echo "$out"; echo "systemd-analyze verify failed" >&2; exit 1; }
if [ -n "$out" ]; then echo "$out"; echo "systemd-analyze verify printed warnings" >&2; exit 1; fi
echo "systemd-analyze verify: clean"

rating=$(systemd-analyze security --offline=yes "$unit" 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
[ -n "$rating" ] || { echo "no exposure rating" >&2; exit 1; }
echo "systemd-analyze security: exposure $rating (limit 1.5)"
awk -v r="$rating" 'BEGIN { exit !(r <= 1.5) }' || { echo "exposure $rating is above 1.5" >&2; exit 1; }
