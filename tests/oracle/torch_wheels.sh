# Sourced by tests/oracle/setup_venv.sh and .ci/lock: where the oracle's torch (the 2.13.0 CPU build) comes from.
# Sets torch_find_links to uv --find-links arguments.
#
# PyPI's linux torch wheel is the CUDA build (several GB with its nvidia-* packages); the CPU build is a local wheel
# on machines that pip's own configuration points at (find-links), and otherwise comes from PyTorch's CPU index.
# JANUS_TORCH_WHEELS (a folder or page with the wheel) wins over both.
torch_find_links=()
if [[ -n "${JANUS_TORCH_WHEELS:-}" ]]; then
    torch_find_links=(--find-links "$JANUS_TORCH_WHEELS")
else
    for location in ${PIP_FIND_LINKS:-} $(python3.11 -m pip config get global.find-links 2>/dev/null || true); do
        if ls "$location"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
            torch_find_links=(--find-links "$location")
            break
        fi
    done
    if [[ ${#torch_find_links[@]} == 0 ]]; then
        torch_find_links=(--find-links "https://download.pytorch.org/whl/cpu/torch/")
    fi
fi
