"""Start ComfyUI's own `main.py` (test-only wrapper; run as a separate process by comfy_server.py).

    python comfy_launcher.py COMFYUI_DIR [main.py arguments...]

The only thing added to a plain `python main.py ...`: where torchvision is not installed (these CPU
machines have no build of it for the pinned torch), ComfyUI's module-level `import torchvision` in model
files the tests never run would stop the server, so the tests' import stand-in is installed for the
server's lifetime. Real users always have torchvision; with it installed this wrapper changes nothing.
"""
from __future__ import annotations

import importlib.util
import os
import runpy
import sys


def main(argv: list[str]) -> None:
    comfy_dir = os.path.abspath(argv[0])
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if importlib.util.find_spec("torchvision") is None:
        sys.path.insert(0, tests_dir)
        from torchvision_stand_in import _prewarm_torchvision_checks, _StandInFinder

        _prewarm_torchvision_checks()  # transformers/diffusers must see torchvision as absent
        sys.meta_path.insert(0, _StandInFinder())
        sys.path.remove(tests_dir)
    main_py = os.path.join(comfy_dir, "main.py")
    sys.argv = [main_py, *argv[1:]]
    sys.path.insert(0, comfy_dir)
    os.chdir(comfy_dir)
    runpy.run_path(main_py, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
