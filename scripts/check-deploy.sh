#!/usr/bin/env bash
# Checks the Containerfile and deploy/kubernetes/ offline (building the image is not part of CI:
# there is no registry to pull a base image from):
#   - every manifest against the Kubernetes API schemas, strictly (kubernetes-validate, with the
#     schemas it ships; pinned, installed into .kv-venv);
#   - the Containerfile's and the manifests' structure and the contract between them
#     (scripts/check_deploy.py);
#   - the ConfigMap's configuration with the Secret's files as $CREDENTIALS_DIRECTORY, through
#     the real binary's check-config.
# usage: scripts/check-deploy.sh [BINARY]   (default: target/debug/socialtalent-sync)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
binary=$(realpath "${1:-target/debug/socialtalent-sync}")
[ -x "$binary" ] || { echo "no binary at $binary; build first" >&2; exit 1; }

venv=.kv-venv
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/python" ] \
   || ! "$venv/bin/python" -c 'import dockerfile_parse' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    'kubernetes-validate==1.37.0' 'dockerfile-parse==2.0.1'
fi

"$venv/bin/kubernetes-validate" --strict --kubernetes-version 1.37.0 deploy/kubernetes/*.yaml
"$venv/bin/python" scripts/check_deploy.py "$binary"
