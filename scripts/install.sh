#!/usr/bin/env bash
# Install DualAnoDiff into .venv in this checkout. `--test` adds what the test suite needs.
# Torch: DUALANODIFF_TORCH overrides the pin (default torch==2.13.0, the CPU build these
# machines provide; on a CUDA machine use the spec PyTorch's site gives for your card).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${DUALANODIFF_TORCH:-torch==2.13.0}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
"${PIP[@]}" "$TORCH_SPEC"
"${PIP[@]}" "$TORCH_SPEC" -e .
if [ "${1:-}" = "--test" ]; then
  "${PIP[@]}" "$TORCH_SPEC" -r requirements-test.txt
fi
