#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite: the core tests once, and the
# ComfyUI tests once per real ComfyUI copy (separate processes: each copy owns `comfy`, `nodes`).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test || { echo "install failed"; exit 1; }
copies=$(.venv/bin/python scripts/fetch_comfyui.py) || { echo "could not fetch the ComfyUI copies"; exit 1; }

failed=0
echo "== core tests"
.venv/bin/python -m pytest tests --ignore=tests/comfyui -q "$@" || failed=1
while read -r label path; do
  echo "== ComfyUI tests against ComfyUI $label"
  DUALANODIFF_COMFYUI="$path" .venv/bin/python -m pytest tests/comfyui -q "$@" || failed=1
done <<< "$copies"
if [ "$failed" -ne 0 ]; then
  echo "some test runs FAILED (see above)"
fi
exit "$failed"
