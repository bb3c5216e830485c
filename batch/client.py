"""ComfyUI over HTTP (stdlib only): the endpoints a batch needs, nothing of ComfyUI imported.

``POST /prompt`` (with a client-chosen ``prompt_id``, a UUID, and ``extra_data``), ``GET
/history/<id>``, ``GET /queue``, ``POST /queue {"delete"}``, ``POST /interrupt {"prompt_id"}``,
``POST /upload/image`` (any file type, into ``input/<subfolder>``), ``GET /view``.
"""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import uuid


class ComfyError(RuntimeError):
    """The server could not be reached, or answered what a batch cannot go on from."""


class PromptRefused(Exception):
    """``/prompt`` answered 400 (validation): ``reply`` is its body."""

    def __init__(self, reply: dict):
        super().__init__(json.dumps(reply)[:500])
        self.reply = reply


class ComfyClient:
    def __init__(self, url: str, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _open(self, req, timeout=None):
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            raise ComfyError(f"ComfyUI at {self.url} cannot be reached: {exc}") from None

    def get(self, path: str):
        with self._open(self.url + path) as r:
            return json.loads(r.read() or b"null")

    def post(self, path: str, payload: dict):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        with self._open(req) as r:
            body = r.read()
            return json.loads(body) if body.strip() else {}

    def object_info(self) -> dict:
        return self.get("/object_info")

    def submit(self, prompt: dict, prompt_id: str, extra_data: dict | None = None) -> str:
        """Queue ``prompt`` under ``prompt_id``; PromptRefused on a validation error."""
        payload = {"prompt": prompt, "prompt_id": prompt_id, "client_id": "realiz3d-batch"}
        if extra_data:
            payload["extra_data"] = extra_data
        try:
            reply = self.post("/prompt", payload)
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                reply = json.loads(body)
            except json.JSONDecodeError:
                raise ComfyError(f"/prompt answered {exc.code}: {body[:300]!r}") from None
            raise PromptRefused(reply) from None
        return reply.get("prompt_id", prompt_id)

    def history(self, prompt_id: str) -> dict | None:
        """The history entry of ``prompt_id`` once it ended (success or error), else None."""
        entry = self.get(f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
            return entry
        return None

    def queue(self) -> tuple[set[str], set[str]]:
        """(running, pending) prompt ids."""
        q = self.get("/queue")
        return ({item[1] for item in q.get("queue_running", [])}, {item[1] for item in q.get("queue_pending", [])})

    def delete_pending(self, prompt_ids) -> None:
        if prompt_ids:
            self.post("/queue", {"delete": list(prompt_ids)})

    def interrupt(self, prompt_id: str) -> None:
        """Interrupt ``prompt_id`` if it is the one running (both hosts check the id)."""
        self.post("/interrupt", {"prompt_id": prompt_id})

    def upload(self, path: str, subfolder: str, name: str | None = None) -> str:
        """Upload the file ``path`` into ``input/<subfolder>/<name>`` (overwriting); returns the
        name the nodes take (``subfolder/name``)."""
        name = name or os.path.basename(path)
        boundary = uuid.uuid4().hex
        with open(path, "rb") as f:
            content = f.read()
        parts = []
        for field, value in (("subfolder", subfolder), ("type", "input"), ("overwrite", "true")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f'Content-Type: application/octet-stream\r\n\r\n'.encode() + content + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        req = urllib.request.Request(self.url + "/upload/image", data=b"".join(parts),
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with self._open(req) as r:
                reply = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise ComfyError(f"uploading {path} to {self.url} failed: HTTP {exc.code}") from None
        return "/".join(p for p in (reply.get("subfolder", subfolder), reply["name"]) if p)

    def download(self, ref: dict, dest: str) -> None:
        """Save the output ``ref`` ({"filename", "subfolder", "type"}) to ``dest`` via /view."""
        query = urllib.parse.urlencode({"filename": ref["filename"], "subfolder": ref.get("subfolder", ""),
                                        "type": ref.get("type", "output")})
        try:
            with self._open(f"{self.url}/view?{query}") as r, open(dest, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
        except urllib.error.HTTPError as exc:
            raise ComfyError(f"downloading {ref.get('subfolder', '')}/{ref['filename']} failed: HTTP {exc.code}") \
                from None
