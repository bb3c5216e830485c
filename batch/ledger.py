"""What a batch has done, kept in ``OUT/ledger.json`` and rewritten atomically after each item.

Key of an item: sha256 of the workflow's content hash and the item's mapped inputs (a file by
the sha256 of its bytes, not its path), so a re-run skips what is done, and a changed workflow
or file runs again. The file is always whole: each write goes to a temporary file in the same
folder, is flushed to disk and renamed over the old one (a crash leaves the old or the new
ledger, never a mix). An item is recorded only after its outputs are in place. A lock file keeps
two runners off the same folder.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import time
import uuid

try:
    import fcntl
except ImportError:          # Windows: no advisory lock; one runner per folder is then up to the user
    fcntl = None

LEDGER = "ledger.json"
VERSION = 1


def item_key(workflow_hash: str, inputs: dict) -> str:
    """sha256 (hex) of the workflow hash and ``inputs`` (column -> value, JSON-able)."""
    blob = json.dumps({"workflow": workflow_hash, "inputs": inputs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if os.name == "posix":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)                 # the rename itself survives a power cut
        finally:
            os.close(fd)


class LedgerLocked(RuntimeError):
    pass


class Ledger:
    """``entries``: key -> record (``state`` "done" or "failed", ``folder``, ``outputs``, ``error``,
    ``attempts``, ``seconds``, ``finished``, ``inputs``). ``batch_id`` names this output folder's
    prompts on the server (a re-run finds the ones a killed run left there)."""

    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)
        self.path = os.path.join(self.folder, LEDGER)
        self.entries: dict[str, dict] = {}
        self.batch_id = uuid.uuid4().hex
        self.resumed = False
        self._lock = None

    @classmethod
    def open(cls, folder: str, lock: bool = True) -> "Ledger":
        """The ledger of ``folder`` (created, and written, when new). ``lock``: hold the folder's
        lock until :meth:`close` (LedgerLocked if another runner holds it)."""
        ledger = cls(folder)
        os.makedirs(ledger.folder, exist_ok=True)
        if lock and fcntl is not None:
            ledger._lock = open(os.path.join(ledger.folder, ".lock"), "w")
            try:
                fcntl.flock(ledger._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                ledger._lock.close()
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise LedgerLocked(f"another realiz3d-batch is running on {ledger.folder}") from None
                raise
        if os.path.exists(ledger.path):
            with open(ledger.path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("version") != VERSION:
                raise ValueError(f"{ledger.path}: ledger version {data.get('version')}, expected {VERSION}")
            ledger.batch_id = data["batch_id"]
            ledger.entries = data["items"]
            ledger.resumed = True
        else:
            ledger.save()
        return ledger

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def save(self) -> None:
        data = {"version": VERSION, "batch_id": self.batch_id, "updated": time.time(), "items": self.entries}
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode())

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def is_done(self, key: str) -> bool:
        return self.entries.get(key, {}).get("state") == "done"

    def record(self, key: str, entry: dict) -> None:
        self.entries[key] = entry
        self.save()
