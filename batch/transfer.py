"""How an item's files reach the server and its outputs come back.

:class:`UploadTransfer` (a remote server, no shared disk): inputs through ``POST /upload/image``,
outputs through ``GET /view``. :class:`SharedDiskTransfer` (a server whose base folder this
machine sees, e.g. the one the runner started): files copied into ``BASE/input`` and out of
``BASE/output``. Either way an input lands at ``input/realiz3d_batch/<sha256[:16]>/<name>``, so
two files of the same name never collide and a file is sent once.
"""
from __future__ import annotations

import os
import shutil

from .client import ComfyClient
from .ledger import file_sha256

UPLOAD_FOLDER = "realiz3d_batch"


class UploadTransfer:
    remote = True

    def __init__(self, client: ComfyClient):
        self.client = client
        self._sent: dict[str, str] = {}

    def put(self, path: str, sha: str | None = None) -> str:
        """The input name (relative to ComfyUI's input folder) of local file ``path``."""
        sha = sha or file_sha256(path)
        if sha not in self._sent:
            self._sent[sha] = self.client.upload(path, f"{UPLOAD_FOLDER}/{sha[:16]}", os.path.basename(path))
        return self._sent[sha]

    def fetch(self, ref: dict, dest: str) -> None:
        self.client.download(ref, dest)


class SharedDiskTransfer:
    remote = False

    def __init__(self, base: str):
        self.base = os.path.abspath(base)
        self._sent: dict[str, str] = {}

    def put(self, path: str, sha: str | None = None) -> str:
        sha = sha or file_sha256(path)
        if sha not in self._sent:
            name = f"{UPLOAD_FOLDER}/{sha[:16]}/{os.path.basename(path)}"
            target = os.path.join(self.base, "input", *name.split("/"))
            if not os.path.isfile(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                tmp = target + ".part"
                shutil.copyfile(path, tmp)
                os.replace(tmp, target)
            self._sent[sha] = name
        return self._sent[sha]

    def fetch(self, ref: dict, dest: str) -> None:
        folder = {"output": "output", "temp": "temp", "input": "input"}[ref.get("type", "output")]
        parts = [p for p in ref.get("subfolder", "").replace("\\", "/").split("/") if p]
        src = os.path.realpath(os.path.join(self.base, folder, *parts, ref["filename"]))
        if os.path.commonpath([src, os.path.realpath(os.path.join(self.base, folder))]) != \
                os.path.realpath(os.path.join(self.base, folder)):
            raise ValueError(f"output {ref} points outside the server's {folder} folder")
        shutil.copyfile(src, dest)
