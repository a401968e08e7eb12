#!/usr/bin/env bash
# Performance benchmarks for socialtalent-sync.
#
#   scripts/bench.sh                    # the whole suite, 100,000 users
#   BENCH_USERS=5000 scripts/bench.sh   # a quick run
#   BENCH_ONLY=planner scripts/bench.sh # one section: binary, planner, creates, rate
#
# What it does:
#   1. builds the release binary (target/release/socialtalent-sync), which the benchmark runs as
#      a subprocess;
#   2. installs wrk (Debian package) when it is missing and apt-get is usable; without wrk the
#      wrk comparison is reported as SKIP;
#   3. runs `cargo bench --bench sync` (benches/sync.rs). It generates a synthetic directory,
#      starts an in-process fake SCIM server on 127.0.0.1, and prints one line per figure:
#          name  value  unit  target  PASS|MISS|INFO|SKIP
#      The wrk comparison is part of it: for each concurrency C in BENCH_CONCURRENCY the binary
#      creates BENCH_CREATE_USERS users with max_in_flight = C and no effective rate limit, then
#      `wrk -c C` posts the same SCIM document (a generated Lua script, unique userNames) to the
#      same server, then a plain reqwest client does the same (the ceiling of the tool's HTTP
#      stack); BENCH_REPEAT rounds alternate the three, and the figures are their medians. Targets: no-change sync of 100k users <= 2 s and <= 250 MB RSS; plan::build
#      >= 500,000 users/s; state <= 3 KB per user; creates >= 70% of wrk; rate limit: no
#      1-second window above R + B, total time within 5% of N/R.
#
# Nothing is asserted: the figures are measurements. They are only meaningful on an otherwise
# idle machine (the benchmark prints the load average at start and end).
#
# Environment (see benches/sync.rs for all): BENCH_USERS (100000), BENCH_REPEAT (3),
# BENCH_ONLY, BENCH_CONCURRENCY ("4,16,64"), BENCH_CREATE_USERS (20000), BENCH_WRK_SECONDS (5),
# BENCH_RATE (50), BENCH_BURST (5), BENCH_RATE_WRITES (500), BENCH_KEEP=1 (keep the temporary
# directory with the generated files, configurations, reports and wrk scripts).
# BENCH_SERVE=PORT runs only the fake SCIM server, for a manual wrk or profiler session:
#   BENCH_SERVE=18080 cargo bench --bench sync &
#   wrk -t2 -c16 -d5s -s <kept dir>/creates/c16/post_users.lua http://127.0.0.1:18080/v2/Users

set -euo pipefail
cd "$(dirname "$0")/.."

echo "# building the release binary" >&2
cargo build --release --locked --bin socialtalent-sync

if ! command -v "${BENCH_WRK:-wrk}" >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "# installing wrk" >&2
        apt-get update -qq && apt-get install -y -qq wrk >/dev/null
    else
        echo "# wrk is not installed (apt-get install wrk); the wrk comparison is skipped" >&2
    fi
fi

exec cargo bench --locked --bench sync
