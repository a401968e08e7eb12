#!/usr/bin/env bash
# Start scim2-server on loopback with the SocialTalent stand-in schema, for humans.
# Prints the server's PID once it is serving; its log is $SCIM_CFG/scim2-server-PORT.log.
#
# usage: tests/scim-peer/start.sh PORT [TOKEN] [-- EXTRA scim2-server ARGS...]
#        e.g. start.sh 18080 s3cret -- --dynamic-tenants
# base URL: http://127.0.0.1:PORT/v2   (with --dynamic-tenants: http://127.0.0.1:PORT/<tenant>/v2)
# stop:     kill PID
# env:      SCIM_VENV, SCIM_CFG as for install.sh (defaults <repo>/.scim-venv, <repo>/.scim-cfg)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
[ $# -ge 1 ] || { echo "usage: $0 PORT [TOKEN] [-- EXTRA ARGS]" >&2; exit 2; }
PORT=$1; shift
TOKEN=s3cret
if [ $# -ge 1 ] && [ "$1" != "--" ]; then TOKEN=$1; shift; fi
[ $# -ge 1 ] && [ "$1" = "--" ] && shift
VENV=${SCIM_VENV:-$repo_root/.scim-venv}; CFG=${SCIM_CFG:-$repo_root/.scim-cfg}
SCIM_VENV=$VENV SCIM_CFG=$CFG "$here/install.sh"

log="$CFG/scim2-server-$PORT.log"
"$VENV/bin/scim2-server" --hostname 127.0.0.1 --port "$PORT" --bearer-token "$TOKEN" \
  --schema "$CFG/schemas.json" --resource-type "$CFG/resource-types.json" "$@" >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 150); do
  if grep -q 'Serving SCIM' "$log"; then echo "$pid"; exit 0; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
echo "scim2-server did not start; its log ($log):" >&2
cat "$log" >&2
kill "$pid" 2>/dev/null || true
exit 1
