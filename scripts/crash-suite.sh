#!/usr/bin/env bash
# The full crash-convergence suite (SPEC §5 "Safety — nothing is lost", issue 7): runs the real
# binary against the SCIM peer through a slowing proxy, kills it with SIGKILL at POINTS points
# spread over the phases of a run (source read, creates, updates, deactivations, rehires, an
# incremental Okta run), restarts it, and checks that SocialTalent equals a run without kill:
# no duplicate, no lost update, no unplanned deactivation, and a following sync plans nothing.
# Prints one line per point and a Markdown summary table (for RELIABILITY.md), kept in
# target/crash-suite/summary.md; the whole output is in target/crash-suite/log.txt.
#
# usage: scripts/crash-suite.sh [POINTS] [SEED]     (default: 60 points, seed 20261126)
# knobs: CRASH_JOBS (points run at once, default 2), CRASH_DELAY_MS (proxy delay, default 250)
# `cargo test` runs the short version (8 points) with the rest of the tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
points=${1:-${CRASH_POINTS:-60}}
seed=${2:-${CRASH_SEED:-20261126}}
[[ $points =~ ^[0-9]+$ && $points -ge 1 ]] || { echo "POINTS must be a positive number" >&2; exit 2; }
[[ $seed =~ ^[0-9]+$ ]] || { echo "SEED must be a number" >&2; exit 2; }

out=target/crash-suite
mkdir -p "$out"
rm -f "$out/summary.md"
cargo test --test it --no-run --quiet
start=$(date +%s)
set +e
CRASH_POINTS=$points CRASH_SEED=$seed CRASH_SUMMARY="$out/summary.md" RUST_BACKTRACE=0 \
  cargo test --quiet --test it crash:: -- --nocapture --test-threads 1 2>&1 | tee "$out/log.txt"
status=${PIPESTATUS[0]}
set -e
echo
echo "crash suite: $points points, seed $seed, $(( $(date +%s) - start )) s, exit $status"
[ -f "$out/summary.md" ] && echo "summary table: $out/summary.md"
exit "$status"
