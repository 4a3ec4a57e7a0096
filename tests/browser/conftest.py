"""Session setup for the browser tests: the real ComfyUI v0.3.75 server with this pack installed, on CPU,
on 127.0.0.1, and headless Debian Chromium showing its web UI. Both are started here and always stopped
(their whole process groups), also when a test or the setup fails.

Chromium missing is a failure, never a silent skip (a run that tests nothing must not pass); set
DUALANODIFF_SKIP_BROWSER=1 to opt out explicitly.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cdp import INSTALL_HINT, find_chromium
from comfy_server import ComfyServer
from comfy_ui import browser_session, write_user_settings
from pack_info import pack_nodes
from thumbnails import WINDOW
from tiny_checkpoint_node import install as install_tiny_checkpoint_node

SKIP_VAR = "DUALANODIFF_SKIP_BROWSER"
SCREENSHOT_VAR = "DUALANODIFF_SCREENSHOT_DIR"


def pytest_configure(config):
    """A SIGTERM (CI timeout, `kill`) becomes KeyboardInterrupt, so pytest still runs the fixtures'
    teardown that stops the server and the browser."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, interrupt)


def pytest_collection_modifyitems(config, items):
    if os.environ.get(SKIP_VAR) == "1":
        skip = pytest.mark.skip(reason=f"{SKIP_VAR}=1")
        for item in items:
            if Path(str(item.fspath)).parent == Path(__file__).parent:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def chromium():
    exe = find_chromium()
    if exe is None:
        pytest.fail(f"Chromium not found: {INSTALL_HINT}", pytrace=False)
    return exe


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = ComfyServer(tmp_path_factory.mktemp("comfyui-server"))
    try:
        srv.prepare()
        install_tiny_checkpoint_node(srv.dir("custom_nodes"))  # test-only MODEL/CLIP/VAE source for training
        write_user_settings(srv.dir("user"))
        srv.start(timeout=float(os.environ.get("DUALANODIFF_SERVER_TIMEOUT", 180)))
        yield srv
    finally:
        srv.stop()
        log = srv.log()
        if log:  # keep the server's log next to the screenshots for CI artifacts
            out = _screenshot_root(tmp_path_factory)
            (out / "server.log").write_text(log, encoding="utf-8")


@pytest.fixture(scope="session")
def ui(server, chromium, tmp_path_factory):
    with browser_session(server, tmp_path_factory.mktemp("chromium"), *WINDOW) as session:
        yield session


def _screenshot_root(tmp_path_factory) -> Path:
    explicit = os.environ.get(SCREENSHOT_VAR)
    root = Path(explicit) if explicit else tmp_path_factory.getbasetemp() / "screenshots"
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    return _screenshot_root(tmp_path_factory)


@pytest.fixture(scope="session")
def object_info(server) -> dict:
    return server.get("/api/object_info", timeout=60)


@pytest.fixture(scope="session")
def pack_node_types() -> dict[str, str]:
    return pack_nodes()
