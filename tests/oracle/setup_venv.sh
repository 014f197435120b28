#!/usr/bin/env bash
# Create (or refresh) the virtual environment of the transformers reference oracle from its lock,
# tests/oracle/requirements.txt (every package pinned with hashes; ./.ci/lock regenerates it).
#
#   tests/oracle/setup_venv.sh [VENV_DIR]     (default: .venv-oracle in the repo root)
#
# Idempotent: a marker inside the venv records the lock it was built from, and nothing is done while it is
# unchanged. The interpreter is python3.11 unless $ORACLE_BASE_PYTHON names another one.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-$root/.venv-oracle}"
requirements="$here/requirements.txt"
base_python="${ORACLE_BASE_PYTHON:-python3.11}"
marker="$venv/.oracle-requirements.txt"

if [[ -x "$venv/bin/python" && -f "$marker" ]] && cmp -s "$requirements" "$marker"; then
    echo "oracle venv $venv is up to date"
    exit 0
fi

if [[ -e "$venv" && ! -f "$venv/pyvenv.cfg" && -n "$(ls -A "$venv" 2>/dev/null)" ]]; then
    # Only ever clear a directory that is already a virtual environment.
    echo "error: $venv exists and is not a virtual environment; refusing to touch it" >&2
    exit 1
fi

echo "creating oracle venv in $venv"
# --clear: a venv from an older lock would keep packages the new one no longer names.
"$base_python" -m venv --clear --without-pip "$venv"
# shellcheck source=tests/oracle/torch_wheels.sh
source "$here/torch_wheels.sh"
# sync: exactly the lock, nothing else; every file checked against its hash.
"$root/.ci/uv" pip sync --quiet --python "$venv/bin/python" --require-hashes --no-config "${torch_find_links[@]}" \
    "$requirements"
# A broken install must not be recorded as done.
"$venv/bin/python" -c "import numpy, PIL, safetensors, torch, transformers; from transformers import JanusForConditionalGeneration"
cp "$requirements" "$marker"
echo "oracle venv ready: $venv/bin/python"
