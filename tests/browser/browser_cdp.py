"""A small Chrome DevTools Protocol client: headless Chromium driven over one websocket.

Blocking API for the tests; the websocket is read by an asyncio loop in a background thread
(aiohttp, a ComfyUI dependency, so it is in every host venv), so that console messages and
exceptions are collected all the time, not only while a command waits for its reply.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

import aiohttp

#: flags for a container: root (no sandbox), no GPU (SwiftShader's software WebGL for the canvas)
CHROMIUM_FLAGS = [
    "--headless=new", "--remote-debugging-port=0", "--remote-allow-origins=*",
    "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
    "--disable-extensions", "--disable-background-networking", "--disable-sync",
    "--disable-component-update", "--disable-default-apps", "--mute-audio",
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows", "--hide-scrollbars",
]


def find_chromium() -> str | None:
    """The Chromium binary (Debian's wrapper script /usr/bin/chromium is skipped for the real
    binary, which needs no shell and prints no wrapper noise), or None."""
    env = os.environ.get("REALIZ3D_CHROMIUM")
    if env:
        return env if os.path.exists(env) else shutil.which(env)
    for path in ("/usr/lib/chromium/chromium",):
        if os.access(path, os.X_OK):
            return path
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class CDPError(RuntimeError):
    pass


class Browser:
    """One headless Chromium process and one page (tab) attached with a flat session."""

    def __init__(self, binary: str, width: int = 1600, height: int = 1000, timeout: float = 60.0):
        self.binary = binary
        self.width, self.height = width, height
        self.timeout = timeout
        self.events: list[dict] = []          # every event of the page session, in order
        self._lock = threading.Lock()
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self.session_id = None

    # -- process and connection ------------------------------------------------------------------
    def start(self) -> "Browser":
        self.profile = tempfile.mkdtemp(prefix="realiz3d-chromium-")
        self._stderr_path = os.path.join(self.profile, "stderr.log")
        self._stderr = open(self._stderr_path, "w")
        self.proc = subprocess.Popen(
            [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self._stderr)
        ws_url = self._wait_ws_url()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._connect(ws_url))
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session_id = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                    session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        return self

    def _wait_ws_url(self) -> str:
        """DevTools prints 'DevTools listening on ws://...' to stderr; DevToolsActivePort in the
        profile holds the same port (read whichever comes first)."""
        t0 = time.time()
        while time.time() - t0 < self.timeout:
            with open(self._stderr_path) as f:
                m = re.search(r"DevTools listening on (ws://\S+)", f.read())
            if m:
                return m.group(1)
            port_file = os.path.join(self.profile, "DevToolsActivePort")
            if os.path.exists(port_file):
                lines = open(port_file).read().split()
                if len(lines) >= 2:
                    return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise CDPError("Chromium did not open its DevTools port:\n" + open(self._stderr_path).read()[-3000:])

    async def _connect(self, ws_url: str) -> None:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(ws_url, max_msg_size=0, heartbeat=None)
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            elif data.get("sessionId") == self.session_id:
                with self._lock:
                    self.events.append(data)
        for fut in self._pending.values():           # the browser went away
            if not fut.done():
                fut.set_exception(CDPError("DevTools connection closed"))

    def _call(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout or self.timeout + 5)

    async def _send(self, method: str, params: dict, session: bool, timeout: float) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session_id
        fut = self.loop.create_future()
        self._pending[self._next_id] = fut
        await self._ws.send_str(json.dumps(msg))
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def send(self, method: str, params: dict | None = None, session: bool = True,
             timeout: float | None = None) -> dict:
        timeout = timeout or self.timeout
        return self._call(self._send(method, params or {}, session, timeout), timeout + 5)

    def close(self) -> None:
        try:
            if getattr(self, "loop", None) is not None:
                try:
                    self.send("Browser.close", session=False, timeout=5)
                except Exception:
                    pass

                async def shut():
                    await self._ws.close()
                    await self._session.close()
                try:
                    self._call(shut(), 10)
                except Exception:
                    pass
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(5)
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            self._stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- page helpers ----------------------------------------------------------------------------
    def navigate(self, url: str, timeout: float | None = None) -> None:
        with self._lock:
            start = len(self.events)
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired", since=start, timeout=timeout)

    def wait_event(self, method: str, since: int = 0, timeout: float | None = None) -> dict:
        t0 = time.time()
        while time.time() - t0 < (timeout or self.timeout):
            with self._lock:
                for ev in self.events[since:]:
                    if ev.get("method") == method:
                        return ev
            time.sleep(0.05)
        raise CDPError(f"no {method} in {timeout or self.timeout} s")

    def evaluate(self, expression: str, timeout: float | None = None):
        """Run JS in the page (promises awaited) and return its JSON value; a thrown error
        raises CDPError with the page's message."""
        res = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                             "returnByValue": True, "userGesture": True},
                        timeout=timeout)
        if "exceptionDetails" in res:
            det = res["exceptionDetails"]
            text = det.get("exception", {}).get("description") or det.get("text")
            raise CDPError(f"page JS failed: {text}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float | None = None, interval: float = 0.25):
        """Poll a JS expression until it is truthy; returns its value."""
        t0 = time.time()
        last = None
        while time.time() - t0 < (timeout or self.timeout):
            try:
                last = self.evaluate(expression)
            except CDPError as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(interval)
        raise CDPError(f"timed out waiting for {expression!r} (last: {last!r})")

    def screenshot(self, path: str) -> str:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    # -- console ---------------------------------------------------------------------------------
    def console_messages(self, since: int = 0) -> list[dict]:
        """Console output, uncaught exceptions and browser log entries since event index
        ``since``, each as {kind, level, text, source}, source being the URLs of the script
        and stack frames involved."""
        with self._lock:
            events = list(self.events[since:])
        out = []
        for ev in events:
            method, p = ev.get("method"), ev.get("params", {})
            if method == "Runtime.consoleAPICalled":
                text = " ".join(_remote_text(a) for a in p.get("args", []))
                out.append({"kind": "console", "level": p.get("type"), "text": text,
                            "source": _stack_urls(p.get("stackTrace"))})
            elif method == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                text = (d.get("exception") or {}).get("description") or d.get("text", "")
                src = " ".join(filter(None, [d.get("url", ""), _stack_urls(d.get("stackTrace"))]))
                out.append({"kind": "exception", "level": "error", "text": text, "source": src})
            elif method == "Log.entryAdded":
                e = p.get("entry", {})
                out.append({"kind": "log", "level": e.get("level"), "text": e.get("text", ""),
                            "source": " ".join(filter(None, [e.get("url", ""), _stack_urls(e.get("stackTrace"))]))})
        return out

    def mark(self) -> int:
        with self._lock:
            return len(self.events)


def _remote_text(obj: dict) -> str:
    """A console argument as text; an object as its preview's properties (an Error's text is in
    its description; a plain object such as {message: ...} only in the preview)."""
    if "value" in obj:
        v = obj["value"]
        return v if isinstance(v, str) else json.dumps(v)
    text = obj.get("description") or obj.get("unserializableValue") or obj.get("type", "")
    preview = obj.get("preview")
    if preview and obj.get("subtype") != "error" and preview.get("properties"):
        props = ", ".join(f"{p.get('name')}: {p.get('value', p.get('type'))}" for p in preview["properties"])
        text += " {" + props + ("..." if preview.get("overflow") else "") + "}"
    return text


def _stack_urls(stack: dict | None) -> str:
    urls = []
    while stack:
        for fr in stack.get("callFrames", []):
            if fr.get("url") and fr["url"] not in urls:
                urls.append(fr["url"])
        stack = stack.get("parent")
    return " ".join(urls)
