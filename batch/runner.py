"""Run a manifest through one workflow on a ComfyUI server, a bounded number of prompts at a time.

Each item becomes one prompt under an id derived from (output folder's batch id, item key,
attempt), a UUID the server accepts as its own, with the same data in ``extra_data`` for anyone
reading ``/history``. That makes the batch recoverable from the server's side: a re-run after a
crash or ``kill -9`` asks ``/queue`` and ``/history`` for those ids first, waits for the prompts
still queued or running and takes the outputs of the ones that finished, so no item runs twice.

Outputs are copied into ``OUT/items/<folder>/`` (through a ``.partial`` folder renamed into place)
before the ledger records the item; ``index.jsonl`` and ``contact_sheet.png`` follow the ledger.

Ctrl-C once: queue nothing more, withdraw this batch's prompts still waiting in the server's
queue, let the one running finish and record it, then stop. Twice: interrupt the running prompt
too and stop at once, recording nothing more. The ledger only ever holds finished items.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from ..scripts.comfy_host import error_message
from .client import ComfyClient, ComfyError, PromptRefused
from .ledger import Ledger, file_sha256, item_key
from .manifest import Item, Manifest
from .mapping import MappingError, Target, apply_item, coerce
from .report import contact_sheet, write_index
from .workflow import workflow_hash

#: seconds between two looks for prompts that left the queue without a history entry
VANISH_CHECK_S = 5.0
#: seconds between two rewrites of index.jsonl while running (it is written at the end anyway)
INDEX_EVERY_S = 2.0


@dataclass
class BatchOptions:
    """in_flight: prompts queued on the server at once (2 keeps it busy while the runner downloads);
    retries: extra attempts for an item whose prompt failed (validation refusals are not retried);
    timeout: seconds a prompt may run before it is interrupted and counted as failed (None: no limit);
    retry_failed: re-run items a previous run recorded as failed; poll: seconds between status checks."""
    in_flight: int = 1
    retries: int = 1
    timeout: float | None = None
    retry_failed: bool = True
    poll: float = 0.02
    progress: bool = True


@dataclass
class Summary:
    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    ran: int = 0
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def pending(self) -> int:
        return self.total - self.done - self.failed


@dataclass
class Prepared:
    """An item ready to queue: ``values`` target -> converted value, or ``("file", path, sha)``."""
    item: Item
    key: str
    folder: str
    values: dict
    key_inputs: dict


@dataclass
class Job:
    prep: Prepared
    attempt: int
    prompt_id: str
    tries: int = 1                   # attempts made in this run
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    timed_out: bool = False


def prompt_uuid(batch_id: str, key: str, attempt: int) -> str:
    digest = hashlib.sha256(f"{batch_id}:{key}:{attempt}".encode()).hexdigest()
    return str(uuid.UUID(hex=digest[:32]))


def _slug(text: str, limit: int = 20) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(text)).strip("-.")[:limit] or "x"


def output_refs(entry: dict) -> list[dict]:
    """The files a finished prompt wrote to the output folder ({"filename", "subfolder", "type",
    "node"}), in node id order; previews (temp) are left out."""
    refs = []

    def order(nid):
        return (0, int(nid), "") if str(nid).isdigit() else (1, 0, str(nid))

    for nid in sorted(entry.get("outputs", {}), key=order):
        for kind, values in sorted(entry["outputs"][nid].items()):
            if not isinstance(values, list):
                continue
            for ref in values:
                if isinstance(ref, dict) and "filename" in ref and ref.get("type", "output") == "output":
                    refs.append(dict(ref, node=str(nid)))
    return refs


def execution_seconds(entry: dict) -> float | None:
    """Seconds the server spent on the prompt (its execution_start to success/error timestamps)."""
    stamps = {kind: data.get("timestamp") for kind, data in entry.get("status", {}).get("messages", [])
              if isinstance(data, dict)}
    end = stamps.get("execution_success") or stamps.get("execution_error") or stamps.get("execution_interrupted")
    if stamps.get("execution_start") and end:
        return (end - stamps["execution_start"]) / 1000.0
    return None


class BatchRunner:
    def __init__(self, client: ComfyClient, transfer, workflow: dict, targets: dict[str, list[Target]],
                 manifest: Manifest, out_dir: str, options: BatchOptions | None = None,
                 fixed: dict[Target, object] | None = None, log=None):
        self.client, self.transfer, self.manifest = client, transfer, manifest
        self.targets, self.fixed = targets, dict(fixed or {})
        self.options = options or BatchOptions()
        self.workflow = apply_item(workflow, self.fixed)
        mapped = tuple((t.node_id, t.input) for ts in targets.values() for t in ts)
        self.workflow_hash = workflow_hash(self.workflow, exclude=mapped)
        self.out_dir = os.path.abspath(out_dir)
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._stops = 0
        self._withdrawn = False
        self._sha: dict[str, str] = {}

    # -- items -----------------------------------------------------------------------------------
    def _file(self, value) -> str | None:
        if not isinstance(value, str) or not value or "\n" in value:
            return None
        path = value if os.path.isabs(value) else os.path.join(self.manifest.base_dir, value)
        return os.path.abspath(path) if os.path.isfile(path) else None

    def prepare(self, item: Item) -> Prepared:
        """Converted values, file hashes, key and folder name of ``item``; MappingError for a
        value its input cannot take, or a mapped column the row lacks."""
        values, key_inputs, names = {}, {}, []
        for column, targets in self.targets.items():
            if column not in item.values:
                raise MappingError(f"item {item.index + 1}: no value for column {column!r}")
            raw = item.values[column]
            path = self._file(raw) if all(t.kind in ("COMBO", "STRING", "") for t in targets) else None
            if path is not None:
                sha = self._sha.get(path) or self._sha.setdefault(path, file_sha256(path))
                key_inputs[column] = {"file": os.path.basename(path), "sha256": sha}
                names.append(os.path.splitext(os.path.basename(path))[0])
                for t in targets:
                    values[t] = ("file", path, sha)
            else:
                try:
                    converted = [coerce(raw, t, column) for t in targets]
                except MappingError as exc:
                    raise MappingError(f"item {item.index + 1} of {self.manifest.source or 'the manifest'}: {exc}") \
                        from None
                key_inputs[column] = converted[0]
                names.append(str(converted[0]))
                values.update(zip(targets, converted))
        folder = f"{item.index:04d}_" + "_".join(_slug(n) for n in names)[:60]
        return Prepared(item, item_key(self.workflow_hash, key_inputs), folder, values, key_inputs)

    def graph(self, prep: Prepared) -> dict:
        values = {t: (self.transfer.put(v[1], v[2]) if isinstance(v, tuple) else v) for t, v in prep.values.items()}
        return apply_item(self.workflow, values)

    # -- control ----------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """First call: finish what runs, queue nothing more. Second: interrupt it too."""
        self._stops += 1
        if self._stops == 1:
            self.log("stopping: no more prompts are queued; this batch's waiting prompts are withdrawn and the "
                     "running one finishes (Ctrl-C again interrupts it)")
        elif self._stops == 2:
            self.log("interrupting the running prompt; it is not recorded and runs again next time")

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> Summary:
        t0 = time.time()
        os.makedirs(os.path.join(self.out_dir, "items"), exist_ok=True)
        ledger = Ledger.open(self.out_dir)
        try:
            return self._run(ledger, t0)
        finally:
            ledger.close()

    def _run(self, ledger: Ledger, t0: float) -> Summary:
        self.ledger = ledger
        self.preps = [self.prepare(item) for item in self.manifest.items]
        summary = self.summary = Summary(total=len(self.preps))
        todo = deque()
        for prep in self.preps:
            entry = ledger.get(prep.key)
            if entry and (entry["state"] == "done" or (entry["state"] == "failed" and not self.options.retry_failed)):
                summary.skipped += 1
                summary.done += entry["state"] == "done"
                summary.failed += entry["state"] == "failed"
            else:
                todo.append((prep, (entry or {}).get("attempts", 0)))
        self.bar = self._progress(summary)
        self.inflight: dict[str, Job] = {}
        self._last_index = 0.0
        if ledger.resumed and todo:
            todo = self._adopt(todo)
        last_vanish_check = time.time()
        while (todo or self.inflight) and self._stops < 2:
            if self._stops == 1 and not self._withdrawn:
                self._withdraw()
                todo.clear()
            while todo and len(self.inflight) < self.options.in_flight and not self._stops:
                prep, attempt = todo.popleft()
                self._submit(prep, attempt)
            if self._poll(todo):
                continue
            if self.inflight and time.time() - last_vanish_check > VANISH_CHECK_S:
                self._check_vanished(todo)
                last_vanish_check = time.time()
            time.sleep(self.options.poll)
        if self._stops >= 2:
            self._interrupt_running()
        summary.interrupted = self._stops > 0
        summary.seconds = time.time() - t0
        self._write_reports(final=True)
        self.bar.close()
        return summary

    def _progress(self, summary: Summary):
        from tqdm import tqdm

        bar = tqdm(total=summary.total, initial=summary.skipped, unit="item", file=sys.stderr,
                   disable=not self.options.progress, dynamic_ncols=True, desc="realiz3d-batch")
        if summary.skipped:
            self.log(f"{summary.skipped} of {summary.total} items already in the ledger: skipped")
        return bar

    def _say(self, line: str) -> None:
        from tqdm import tqdm

        if self.options.progress:
            tqdm.write(line, file=sys.stderr)
        else:
            self.log(line)

    def _postfix(self) -> None:
        s = self.summary
        self.bar.set_postfix(done=s.done, failed=s.failed, in_flight=len(self.inflight), refresh=False)

    def _adopt(self, todo: deque) -> deque:
        """Prompts a previous run of this folder left on the server: wait for the queued and
        running ones, take the finished ones; the rest go back to ``todo`` at their next attempt."""
        running, pending = self.client.queue()
        rest = deque()
        for prep, attempt in todo:
            while True:
                pid = prompt_uuid(self.ledger.batch_id, prep.key, attempt)
                if pid in running or pid in pending:
                    self.inflight[pid] = Job(prep, attempt, pid, started=time.time() if pid in running else None)
                    self._say(f"{prep.folder}: still on the server from the last run, waiting for it")
                    break
                entry = self.client.history(pid)
                if entry is None:
                    rest.append((prep, attempt))
                    break
                if entry["status"]["status_str"] == "success":
                    self._say(f"{prep.folder}: finished on the server after the last run stopped; taking its outputs")
                    self._finish(Job(prep, attempt, pid), entry, rest)
                    break
                attempt += 1                       # that attempt failed or was interrupted: not counted here
        self._postfix()
        return rest

    def _submit(self, prep: Prepared, attempt: int, tries: int = 1) -> None:
        pid = prompt_uuid(self.ledger.batch_id, prep.key, attempt)
        extra = {"realiz3d_batch": {"batch": self.ledger.batch_id, "item": prep.key, "attempt": attempt,
                                    "folder": prep.folder}}
        job = Job(prep, attempt, pid, tries)
        try:
            self.client.submit(self.graph(prep), pid, extra)
        except PromptRefused as exc:
            self._record_failure(job, "the server refused the prompt: " + error_message(exc.reply))
            return
        except (ComfyError, OSError) as exc:
            if isinstance(exc, ComfyError) and "cannot be reached" in str(exc):
                raise
            self._record_failure(job, f"could not queue the prompt: {exc}")
            return
        self.inflight[pid] = job
        self._say(f"{prep.folder}: queued" + (f" (attempt {tries})" if tries > 1 else ""))
        self._postfix()
        self.bar.refresh()

    def _poll(self, todo: deque) -> bool:
        """Handle the oldest prompts that ended (the server runs them in order). True if any did."""
        progressed = False
        for pid in list(self.inflight):
            job = self.inflight[pid]
            if job.started is None:
                job.started = time.time()
            entry = self.client.history(pid)
            if entry is None:
                if self.options.timeout and time.time() - job.started > self.options.timeout:
                    self.client.interrupt(pid)
                    job.started = float("inf")          # interrupted once; its history entry ends it
                    job.timed_out = True
                    self._say(f"{job.prep.folder}: ran over {self.options.timeout:g} s, interrupted")
                break
            del self.inflight[pid]
            self._finish(job, entry, todo)
            progressed = True
        return progressed

    def _check_vanished(self, todo: deque) -> None:
        running, pending = self.client.queue()
        for pid, job in list(self.inflight.items()):
            if pid not in running and pid not in pending and self.client.history(pid) is None:
                del self.inflight[pid]
                self._failed_attempt(job, "the prompt left the server's queue without running (deleted from the "
                                          "queue, or the server restarted)", todo)

    def _finish(self, job: Job, entry: dict, todo: deque) -> None:
        if entry["status"]["status_str"] == "success":
            try:
                outputs = self._collect(job, entry)
            except (ComfyError, OSError, ValueError) as exc:
                self._failed_attempt(job, f"its outputs could not be copied: {exc}", todo)
                return
            seconds = execution_seconds(entry)
            self.ledger.record(job.prep.key, self._entry(job, "done", outputs=outputs, seconds=seconds))
            self.summary.done += 1
            self.summary.ran += 1
            self._say(f"{job.prep.folder}: done" + (f" in {seconds:.2f} s" if seconds is not None else "")
                      + f", {len(outputs)} file(s)")
            self._postfix()
            self.bar.update(1)
            self._write_reports()
            return
        message = error_message(entry) or "the prompt failed"
        if job.timed_out:
            message = f"ran over the {self.options.timeout:g} s timeout and was interrupted"
        elif any(kind == "execution_interrupted" for kind, _ in entry["status"].get("messages", [])):
            message = "interrupted on the server"
        self._failed_attempt(job, message, todo)

    def _failed_attempt(self, job: Job, message: str, todo: deque) -> None:
        if job.tries <= self.options.retries and self._stops == 0:
            self._say(f"{job.prep.folder}: failed ({message}); retrying ({job.tries}/{self.options.retries})")
            self._submit(job.prep, job.attempt + 1, job.tries + 1)
            return
        self._record_failure(job, message)

    def _record_failure(self, job: Job, message: str) -> None:
        self.ledger.record(job.prep.key, self._entry(job, "failed", error=message))
        self.summary.failed += 1
        self.summary.ran += 1
        self._say(f"{job.prep.folder}: FAILED: {message}")
        self._postfix()
        self.bar.update(1)
        self._write_reports()

    def _entry(self, job: Job, state: str, outputs=(), seconds=None, error=None) -> dict:
        return {"state": state, "item": job.prep.item.index, "folder": f"items/{job.prep.folder}",
                "inputs": job.prep.key_inputs, "outputs": list(outputs), "seconds": seconds, "error": error,
                "attempts": job.attempt + 1, "prompt_id": job.prompt_id, "finished": time.time()}

    def _collect(self, job: Job, entry: dict) -> list[str]:
        """Copy the prompt's outputs into items/<folder>/ (all or nothing); their paths relative to
        the output folder, in node order."""
        final = os.path.join(self.out_dir, "items", job.prep.folder)
        partial = os.path.join(self.out_dir, "items", f".{job.prep.folder}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(partial)
        names = []
        for ref in output_refs(entry):
            name = os.path.basename(ref["filename"])
            if name in names:
                name = f"{ref['node']}_{name}"
            self.transfer.fetch(ref, os.path.join(partial, name))
            names.append(name)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        return [f"items/{job.prep.folder}/{n}" for n in names]

    def _withdraw(self) -> None:
        self._withdrawn = True
        try:
            running, pending = self.client.queue()
            mine = [pid for pid in self.inflight if pid in pending]
            self.client.delete_pending(mine)
        except ComfyError as exc:
            self.log(f"could not withdraw the queued prompts: {exc}")
            return
        for pid in mine:
            del self.inflight[pid]
        if mine:
            self._say(f"withdrew {len(mine)} queued prompt(s) from the server")
        self._postfix()

    def _interrupt_running(self) -> None:
        try:
            running, pending = self.client.queue()
            self.client.delete_pending([pid for pid in self.inflight if pid in pending])
            for pid in self.inflight:
                if pid in running:
                    self.client.interrupt(pid)
        except ComfyError as exc:
            self.log(f"could not interrupt: {exc}")

    def _write_reports(self, final: bool = False) -> None:
        if not final and time.time() - self._last_index < INDEX_EVERY_S:
            return
        self._last_index = time.time()
        write_index(self.out_dir, self.preps, self.ledger)
        if final:
            contact_sheet(self.out_dir, self.preps, self.ledger)
