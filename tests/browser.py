"""A headless Chromium driven over the DevTools protocol (websocket-client), for the explore page's tests.

Debian's `chromium` package is the browser (`.ci/run` installs it); no driver binary whose version must match.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    """The Chromium executable: $ANIMEVAE_CHROMIUM, else the first of BROWSERS on PATH."""
    named = os.environ.get("ANIMEVAE_CHROMIUM")
    if named:
        return shutil.which(named)
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


class BrowserError(AssertionError):
    """The browser failed, or the page never reached the state a test waited for."""


class Tab:
    """One page of the browser, over its own DevTools connection: `evaluate` runs JavaScript in it, `wait_for`
    polls an expression."""

    def __init__(self, websocket_url: str) -> None:
        import websocket  # websocket-client: the dev extra

        self.socket = websocket.create_connection(websocket_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events that arrive meanwhile are dropped)."""
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited); a thrown error fails the test."""
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll until `expression` is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        message = self.evaluate("document.getElementById('message').textContent")
        raise BrowserError(f"timed out waiting for {expression} (page message: {message!r})")

    def open(self, url: str) -> None:
        """Load `url` and wait for the page to say it is ready (body[data-ready])."""
        self.send("Page.navigate", url=url)
        self.wait_for("document.body && document.body.dataset.ready === '1'")

    def set_file(self, selector: str, path: Path) -> None:
        """Choose `path` in a file input, as a user would (fires its change event)."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", files=[str(path)], nodeId=node)

    def drop_file(self, selector: str, path: Path) -> None:
        """Drag `path` from outside the browser and drop it on the middle of the element `selector` names."""
        x, y = self.evaluate(f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
                             " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        data = {"items": [], "files": [str(path)], "dragOperationsMask": 1}  # 1: copy
        for kind in ("dragEnter", "dragOver", "drop"):
            self.send("Input.dispatchDragEvent", type=kind, x=x, y=y, data=data)

    def screenshot(self, path: Path, width: int, height: int) -> None:
        """A PNG of the page at width x height CSS pixels."""
        import base64

        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

class Browser(Tab):
    """One headless Chromium; itself its first tab, `new_tab` opens more."""

    def __init__(self, executable: str, width: int = 1200, height: int = 900) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="animevae-chromium-"))
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        self.process = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--remote-debugging-port=0",
             # Tabs behind the first must run their timers at full speed: the tests use several at once.
             "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
             "--disable-backgrounding-occluded-windows", "--disable-dev-shm-usage", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.tabs: list[Tab] = []
        try:
            self.port = self._devtools_port()
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10).read())
            super().__init__(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        except BaseException:  # no test will close a browser it never got: stop it here, not after the session
            self._stop()
            raise

    def new_tab(self) -> Tab:
        """Another tab of this browser (closed with it)."""
        opening = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?about:blank", method="PUT")
        tab = Tab(json.loads(urllib.request.urlopen(opening, timeout=10).read())["webSocketDebuggerUrl"])
        self.tabs.append(tab)
        return tab

    def _devtools_port(self, timeout: float = 30.0) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrowserError(f"chromium exited with {self.process.returncode} before it listened")
            if marker.is_file() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            time.sleep(0.05)
        raise BrowserError("chromium did not open its DevTools port in time")

    def close(self) -> None:
        """Stop the browser and remove its profile."""
        try:
            for tab in [*self.tabs, self]:
                tab.socket.close()
        finally:
            self._stop()

    def _stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
