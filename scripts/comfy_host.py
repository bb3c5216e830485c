"""Start a real ComfyUI headless with this pack installed, and drive it over HTTP.

Used by the end-to-end tests and the README's demo. The host comes from
scripts/setup_host.sh (default location .cache/host).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_DIR = os.environ.get("REALIZ3D_HOST_DIR", os.path.join(ROOT, ".cache", "host"))
PACK_NAME = "realiz3d-refany3d"   # the registry name, as a registry install names the folder


def comfy_dir() -> str:
    return os.environ.get("COMFY_DIR", os.path.join(HOST_DIR, "ComfyUI"))


def comfy_python() -> str:
    venv = os.path.join(HOST_DIR, "venv", "bin", "python")
    return os.environ.get("COMFY_PYTHON", venv if os.path.exists(venv) else sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI process on a free loopback port with a fresh base directory."""

    def __init__(self, base: str, startup_timeout: float = 180.0, extra_nodes=()):
        """extra_nodes: folders of further custom node packs to link beside this one (the
        tests' own test-only nodes)."""
        self.base = os.path.abspath(base)
        self.extra_nodes = [os.path.abspath(p) for p in extra_nodes]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.proc = None

    def start(self) -> "ComfyServer":
        os.makedirs(os.path.join(self.base, "custom_nodes"), exist_ok=True)
        link = os.path.join(self.base, "custom_nodes", PACK_NAME)
        if not os.path.lexists(link):
            os.symlink(ROOT, link)
        for folder in self.extra_nodes:
            extra = os.path.join(self.base, "custom_nodes", os.path.basename(folder))
            if not os.path.lexists(extra):
                os.symlink(folder, extra)
        self.log_path = os.path.join(self.base, "server.log")
        self._log = open(self.log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("HF_HUB_OFFLINE", "1")     # nothing may reach for a hub: weights are local only
        self.proc = subprocess.Popen(
            [comfy_python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
             "--disable-auto-launch", "--disable-api-nodes", "--base-directory", self.base,
             "--database-url", "sqlite:///:memory:"],
            cwd=comfy_dir(), stdout=self._log, stderr=subprocess.STDOUT, env=env)
        t0 = time.time()
        while True:
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                if self.proc.poll() is not None or time.time() - t0 > self.startup_timeout:
                    self.stop()
                    raise RuntimeError("ComfyUI did not start:\n" + self.log()[-4000:])
                time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
                return json.loads(body) if body else {}
        except urllib.error.HTTPError as exc:   # 400 on validation errors: return the body
            return {"http_status": exc.code, **json.loads(exc.read() or b"{}")}

    def submit(self, prompt: dict) -> dict:
        return self.post("/prompt", {"prompt": prompt})

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            h = self.get(f"/history/{prompt_id}")
            if prompt_id in h and h[prompt_id]["status"].get("status_str") in ("success", "error"):
                return h[prompt_id]
            if self.proc.poll() is not None:
                raise RuntimeError("ComfyUI exited:\n" + self.log()[-4000:])
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Submit and wait. Returns the history entry, or the /prompt reply if validation failed."""
        reply = self.submit(prompt)
        if "prompt_id" not in reply:
            return reply
        return self.wait(reply["prompt_id"], timeout)

    def output_files(self, history: dict) -> list[str]:
        """Absolute paths of the files a finished prompt wrote to the output folder."""
        paths = []
        for node_out in history.get("outputs", {}).values():
            for key in ("images", "3d"):
                for item in node_out.get(key, []):
                    if item.get("type", "output") == "output":
                        paths.append(os.path.join(self.base, "output", item.get("subfolder", ""), item["filename"]))
        return paths

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def error_message(history: dict) -> str:
    """The error text of a failed prompt ('' if none): the execution error, or for a prompt refused
    at validation the message of a node's own check (``validate_inputs``), else the whole reply."""
    for kind, data in history.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('exception_type', '')}: {data.get('exception_message', '')}"
    if "error" in history:   # validation failure reply from /prompt
        for node in history.get("node_errors", {}).values():
            for e in node.get("errors", []):
                if e.get("type") == "custom_validation_failed" and " - " in e.get("details", ""):
                    return e["details"].split(" - ", 1)[1]
        return json.dumps(history)
    return ""


def load_workflow(name: str) -> dict:
    with open(os.path.join(ROOT, "example_workflows", name)) as f:
        return json.load(f)


def copy_outputs(paths: list[str], dest: str) -> list[str]:
    os.makedirs(dest, exist_ok=True)
    out = []
    for p in paths:
        target = os.path.join(dest, os.path.basename(p))
        shutil.copyfile(p, target)
        out.append(target)
    return out


def run_and_interrupt(server: ComfyServer, prompt: dict, node_id: str, after: int, timeout: float = 120) -> dict:
    """Run ``prompt``, POST /interrupt once node ``node_id`` reports progress >= ``after``, and
    follow the websocket until the prompt ends. Returns the progress values seen for that node
    before and after the interrupt, and the final message type."""
    import asyncio
    import uuid

    import aiohttp

    async def go():
        client = uuid.uuid4().hex
        seen = {"before": [], "after": [], "end": None}
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{server.url}/ws?clientId={client}") as ws:
                async with session.post(f"{server.url}/prompt", json={"prompt": prompt, "client_id": client}) as r:
                    pid = (await r.json())["prompt_id"]
                interrupted = False
                deadline = time.time() + timeout
                while time.time() < deadline:
                    msg = await ws.receive(timeout=timeout)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        continue
                    data = json.loads(msg.data)
                    kind, body = data.get("type"), data.get("data", {})
                    if body.get("prompt_id") not in (None, pid):
                        continue
                    if kind == "progress" and body.get("node") == node_id:
                        seen["after" if interrupted else "before"].append(body["value"])
                        if not interrupted and body["value"] >= after:
                            async with session.post(f"{server.url}/interrupt", json={}) as r:
                                await r.read()
                            interrupted = True
                    elif kind in ("execution_interrupted", "execution_success", "execution_error"):
                        seen["end"] = kind
                        return seen
        return seen

    return asyncio.run(go())
