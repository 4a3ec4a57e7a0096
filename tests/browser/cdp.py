"""A small Chrome DevTools Protocol client for the browser tests: headless Debian Chromium driven over
its debugging websocket with aiohttp (already a test dependency), no browser download, no node.

    with Chromium.launch(user_data_dir, log_path) as browser:
        page = browser.page
        page.navigate("http://127.0.0.1:8188/")
        page.evaluate("document.title")

Chromium runs in its own process group and session, listens for DevTools only on 127.0.0.1 (port
chosen by Chromium, read from the DevToolsActivePort file), and is killed on exit, also on errors.
Every wait is bounded. A background thread runs the websocket loop so that console messages,
exceptions and dialogs are recorded while the test does other things.
"""
from __future__ import annotations

import asyncio
import atexit
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import aiohttp

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
INSTALL_HINT = ("the browser tests need Debian's Chromium: `apt-get update && apt-get install -y chromium` "
                "(as root), or set DUALANODIFF_CHROMIUM to a Chromium/Chrome binary; "
                "DUALANODIFF_SKIP_BROWSER=1 skips the browser stage of scripts/test.sh")
# The flags the issue asks for, plus the ones that keep a closed network quiet and the page size fixed.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
    "--disable-quic", "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
    "--hide-scrollbars", "--force-device-scale-factor=1",
)


class CDPError(RuntimeError):
    pass


def find_chromium() -> str | None:
    explicit = os.environ.get("DUALANODIFF_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for cand in CHROMIUM_CANDIDATES:
        if os.access(cand, os.X_OK):
            return cand
    return shutil.which("chromium")


def kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group of `proc` (it was started in its own session), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:  # whatever is left of the group (renderers, zygotes), and the leader if it hung
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass


class Page:
    """One page target: commands, JS evaluation, input, screenshots, and recorded events."""

    def __init__(self, ws_url: str, timeout: float = 60.0):
        self.timeout = timeout
        self.console: list[dict] = []     # {"type", "text"} of console.* calls
        self.exceptions: list[str] = []   # uncaught exceptions
        self.log_entries: list[dict] = [] # browser log (failed requests, ...)
        self.dialogs: list[str] = []      # alert/confirm/prompt texts (auto-dismissed)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cdp", daemon=True)
        self._thread.start()
        self._session = None
        self._ws = None
        self._reader = None
        self._run(self._connect(ws_url), timeout)
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    # --- plumbing ---------------------------------------------------------------------------------
    def _run(self, coro, timeout):
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    async def _connect(self, ws_url):
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(ws_url, max_msg_size=0, heartbeat=None)
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self):
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            else:
                self._on_event(data.get("method"), data.get("params", {}))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(CDPError("DevTools connection closed"))

    def _on_event(self, method, params):
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", a.get("type")))) for a in params.get("args", []))
            self.console.append({"type": params.get("type"), "text": text})
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            self.exceptions.append(d.get("exception", {}).get("description") or d.get("text", "?"))
        elif method == "Log.entryAdded":
            e = params.get("entry", {})
            self.log_entries.append({"level": e.get("level"), "text": e.get("text"), "url": e.get("url")})
        elif method == "Page.javascriptDialogOpening":
            self.dialogs.append(params.get("message", ""))
            asyncio.ensure_future(self._send("Page.handleJavaScriptDialog", {"accept": False}))

    async def _send(self, method, params):
        msg_id = next(self._ids)
        fut = self._loop.create_future()
        self._pending[msg_id] = fut
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        return await fut

    def call(self, method: str, timeout: float | None = None, **params) -> dict:
        reply = self._run(self._send(method, params), timeout or self.timeout)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def close(self):
        async def _close():
            if self._ws is not None:
                await self._ws.close()
            if self._session is not None:
                await self._session.close()
        try:
            self._run(_close(), 5)
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # --- conveniences -----------------------------------------------------------------------------
    def evaluate(self, expression: str, timeout: float | None = None):
        """Evaluate JS in the page (awaiting promises); return its JSON value or raise on a JS error."""
        res = self.call("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True,
                        returnByValue=True, userGesture=True)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise CDPError(f"JS error: {d.get('exception', {}).get('description') or d.get('text')}\n"
                           f"in: {expression[:300]}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.25, what: str = ""):
        """Poll a JS expression until it is truthy; return its value. Bounded by `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last_error = None
        while True:
            try:
                value = self.evaluate(expression, timeout=max(1.0, deadline - time.monotonic()))
                if value:
                    return value
            except CDPError as exc:
                last_error = exc
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f} s for {what or expression!r}"
                                   + (f" (last error: {last_error})" if last_error else ""))
            time.sleep(interval)

    def navigate(self, url: str, timeout: float = 60.0):
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'", timeout=timeout, what=f"load of {url}")

    def set_viewport(self, width: int, height: int):
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def click_at(self, x: float, y: float):
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def click(self, selector: str, timeout: float = 30.0):
        """Click the centre of the first visible element matching a CSS selector, as a user would."""
        box = self.wait_for(
            "(() => { for (const el of document.querySelectorAll(%s)) { const r = el.getBoundingClientRect();"
            " if (r.width > 0 && r.height > 0) return {x: r.x + r.width / 2, y: r.y + r.height / 2}; }"
            " return null; })()" % json.dumps(selector), timeout=timeout, what=f"visible {selector}")
        self.click_at(box["x"], box["y"])

    def click_text(self, text: str, within: str = "body", timeout: float = 30.0):
        """Click the innermost visible element under `within` whose whole text is `text` (scrolled into
        view first, and clicked once its position is steady)."""
        find = ("(() => { for (const root of document.querySelectorAll(%s))"
                " for (const el of root.querySelectorAll('*')) {"
                "  if (el.textContent.trim() !== %s) continue;"
                "  if ([...el.children].some(c => c.textContent.trim() === %s)) continue;"
                "  %%s const r = el.getBoundingClientRect();"
                "  if (r.width > 0 && r.height > 0) return {x: r.x + r.width / 2, y: r.y + r.height / 2}; }"
                " return null; })()" % (json.dumps(within), json.dumps(text), json.dumps(text)))
        self.wait_for(find % "el.scrollIntoView({block: 'center', inline: 'nearest'});", timeout=timeout,
                      what=f"visible text {text!r} in {within}")
        box, deadline = None, time.monotonic() + timeout
        while time.monotonic() < deadline:  # wait for scrolling/animations to finish
            time.sleep(0.2)
            now = self.wait_for(find % "", timeout=timeout, what=f"visible text {text!r} in {within}")
            if now == box:
                break
            box = now
        self.click_at(box["x"], box["y"])

    def type_text(self, text: str):
        """Type into the focused element (real input events, so the UI's handlers see them)."""
        self.call("Input.insertText", text=text)

    def screenshot(self, path: str | os.PathLike, fmt: str = "png"):
        data = self.call("Page.captureScreenshot", format=fmt, captureBeyondViewport=False)["data"]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)


class Chromium:
    """Headless Chromium in its own process group, one page, stopped on `close()`/context exit."""

    def __init__(self, proc: subprocess.Popen, page: Page, log_path: Path):
        self.proc, self.page, self.log_path = proc, page, log_path

    @classmethod
    def launch(cls, user_data_dir: str | os.PathLike, log_path: str | os.PathLike,
               width: int = 1600, height: int = 1000, timeout: float = 60.0) -> Chromium:
        exe = find_chromium()
        if exe is None:
            raise FileNotFoundError(f"no Chromium found; {INSTALL_HINT}")
        user_data_dir, log_path = Path(user_data_dir), Path(log_path)
        user_data_dir.mkdir(parents=True, exist_ok=True)
        port_file = user_data_dir / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        args = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}",
                "about:blank"]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        atexit.register(kill_group, proc)  # last resort if the interpreter exits without close()
        try:
            deadline = time.monotonic() + timeout
            while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
                if proc.poll() is not None:
                    raise RuntimeError(f"Chromium exited with {proc.returncode}; log {log_path}:\n"
                                       + log_path.read_text(errors="replace")[-3000:])
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Chromium wrote no DevToolsActivePort in {timeout:.0f} s")
                time.sleep(0.1)
            port = int(port_file.read_text().splitlines()[0])
            ws_url = cls._page_target(port, deadline)
            page = Page(ws_url, timeout=timeout)
            page.set_viewport(width, height)
            return cls(proc, page, log_path)
        except BaseException:
            kill_group(proc)
            raise

    @staticmethod
    def _page_target(port: int, deadline: float) -> str:
        import urllib.request

        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    targets = json.load(r)
                pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium's DevTools endpoint listed no page")
            time.sleep(0.2)

    def close(self):
        try:
            self.page.close()
        finally:
            kill_group(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
