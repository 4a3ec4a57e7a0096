#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite: the core tests once, the
# ComfyUI tests once per real ComfyUI copy (separate processes: each copy owns `comfy`, `nodes`), and
# the browser tests (the real v0.3.75 server + headless Chromium; needs `apt-get install chromium`,
# fails without it; DUALANODIFF_SKIP_BROWSER=1 skips that stage explicitly).
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
run core .venv/bin/python -m pytest tests --ignore=tests/comfyui --ignore=tests/browser -q
while read -r label path; do
  run "comfyui-$label" DUALANODIFF_COMFYUI="$path" .venv/bin/python -m pytest tests/comfyui -q
done <<< "$copies"
if [ "${DUALANODIFF_SKIP_BROWSER:-}" = "1" ]; then
  echo "== browser: SKIPPED (DUALANODIFF_SKIP_BROWSER=1)"
else
  # screenshots of the loaded example workflows and the server log land in out/browser/
  run browser DUALANODIFF_SCREENSHOT_DIR=out/browser .venv/bin/python -m pytest tests/browser -q
fi

count() { grep -hoE "[0-9]+ $1" "$logs"/*.log | awk '{s += $1} END {print s + 0}'; }
echo "total: $(count passed) passed, $(( $(count failed) + $(count error) )) failed"
exit "$failed"
