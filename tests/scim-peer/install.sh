#!/usr/bin/env bash
# Install the SCIM test peer (scim2-server, pinned) and generate its schema files.
#
# Idempotent and quiet: a second run only checks a stamp file and exits. Any failure
# prints the reason (and pip's output) on stderr and exits non-zero.
#
# usage: tests/scim-peer/install.sh
# env:   SCIM_VENV  venv to create/use      (default: <repo>/.scim-venv)
#        SCIM_CFG   where schemas go        (default: <repo>/.scim-cfg)
#        PYTHON     interpreter for the venv (default: python3; scim2-server needs >= 3.11)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
VENV=${SCIM_VENV:-$repo_root/.scim-venv}
CFG=${SCIM_CFG:-$repo_root/.scim-cfg}
PYTHON=${PYTHON:-python3}
PIN='scim2-server==0.8.3'
stamp="$VENV/.installed-scim2-server-0.8.3"

die() { echo "scim-peer/install.sh: $*" >&2; exit 1; }

# Serialise concurrent runs (e.g. several test binaries starting at once).
mkdir -p "$(dirname "$VENV")" "$CFG"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CFG/.install.lock"
  flock 9
fi

# 1. The venv with the pinned server. The stamp is written only after a complete install,
#    so an interrupted run is simply redone (venv creation and pip install are idempotent).
if [ ! -f "$stamp" ] || [ ! -x "$VENV/bin/scim2-server" ]; then
  command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found; python >= 3.11 is required"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$("$PYTHON" --version 2>&1) is too old; scim2-server needs python >= 3.11 (set PYTHON=...)"
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  if ! "$PYTHON" -m venv "$VENV" >"$log" 2>&1; then
    cat "$log" >&2; die "could not create the venv $VENV (is python3-venv installed?)"
  fi
  if ! "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q "$PIN" >"$log" 2>&1; then
    cat "$log" >&2; die "pip install '$PIN' into $VENV failed"
  fi
  [ -x "$VENV/bin/scim2-server" ] || die "pip succeeded but $VENV/bin/scim2-server is missing"
  touch "$stamp"
fi

# 2. Schema files (core User/Group/EnterpriseUser + the SocialTalent extension).
#    Regenerated when missing or older than make-schemas.py; written atomically.
if [ ! -s "$CFG/schemas.json" ] || [ ! -s "$CFG/resource-types.json" ] ||
   [ "$here/make-schemas.py" -nt "$CFG/schemas.json" ] || [ "$stamp" -nt "$CFG/schemas.json" ]; then
  tmp=$(mktemp -d "$CFG/.gen.XXXXXX")
  "$VENV/bin/python" "$here/make-schemas.py" "$tmp" || { rm -rf "$tmp"; die "make-schemas.py failed"; }
  mv -f "$tmp/resource-types.json" "$CFG/resource-types.json"
  mv -f "$tmp/schemas.json" "$CFG/schemas.json"
  rmdir "$tmp"
fi
