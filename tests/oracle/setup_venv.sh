#!/usr/bin/env bash
# Create (or refresh) the virtual environment of the transformers reference oracle.
#
#   tests/oracle/setup_venv.sh [VENV_DIR]     (default: .venv-oracle in the repo root)
#
# Idempotent: a marker inside the venv records the requirements it was built from, and nothing is done while they
# are unchanged. The interpreter is python3.11 unless $ORACLE_BASE_PYTHON names another one.
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
# --clear: a venv from older requirements would keep packages the new ones no longer name.
"$base_python" -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --no-input --disable-pip-version-check -r "$requirements"
# A broken install must not be recorded as done.
"$venv/bin/python" -c "import numpy, PIL, safetensors, torch, transformers; from transformers import JanusForConditionalGeneration"
cp "$requirements" "$marker"
echo "oracle venv ready: $venv/bin/python"
