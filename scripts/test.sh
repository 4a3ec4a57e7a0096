#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite: the core tests once, and the
# ComfyUI tests once per real ComfyUI copy (separate processes: each copy owns `comfy`, `nodes`).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test || { echo "install failed"; exit 1; }
copies=$(.venv/bin/python scripts/fetch_comfyui.py) || { echo "could not fetch the ComfyUI copies"; exit 1; }

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=0
run() {  # run NAME [env...] -- pytest args
  local name=$1; shift
  echo "== $name"
  env "$@" 2>&1 | tee "$logs/$name.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || failed=1
}
run core .venv/bin/python -m pytest tests --ignore=tests/comfyui -q
while read -r label path; do
  run "comfyui-$label" DUALANODIFF_COMFYUI="$path" .venv/bin/python -m pytest tests/comfyui -q
done <<< "$copies"

count() { grep -hoE "[0-9]+ $1" "$logs"/*.log | awk '{s += $1} END {print s + 0}'; }
echo "total: $(count passed) passed, $(( $(count failed) + $(count error) )) failed"
exit "$failed"
