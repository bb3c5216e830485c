"""realiz3d.batch.ledger: keys, atomic writes, the lock, and the runner's resume logic against a
fake server (no ComfyUI)."""
import json
import os

import pytest

from realiz3d.batch.ledger import Ledger, LedgerLocked, atomic_write, item_key
from realiz3d.batch.manifest import cross_product
from realiz3d.batch.mapping import Target
from realiz3d.batch.runner import BatchOptions, BatchRunner, prompt_uuid


def test_keys_follow_inputs_and_workflow():
    k = item_key("w1", {"mesh": {"file": "a.glb", "sha256": "00"}, "seed": 1})
    assert k == item_key("w1", {"seed": 1, "mesh": {"sha256": "00", "file": "a.glb"}})      # order-free
    assert k != item_key("w2", {"mesh": {"file": "a.glb", "sha256": "00"}, "seed": 1})       # workflow changed
    assert k != item_key("w1", {"mesh": {"file": "a.glb", "sha256": "01"}, "seed": 1})       # file content changed
    assert k != item_key("w1", {"mesh": {"file": "a.glb", "sha256": "00"}, "seed": 2})


def test_ledger_round_trip_and_batch_id(tmp_path):
    a = Ledger.open(str(tmp_path))
    assert not a.resumed and os.path.isfile(a.path)            # written as soon as it exists
    a.record("k", {"state": "done", "outputs": ["items/x/a.png"]})
    a.close()
    b = Ledger.open(str(tmp_path))
    assert b.resumed and b.batch_id == a.batch_id and b.is_done("k") and not b.is_done("other")
    b.close()


def test_a_failed_write_leaves_the_old_ledger(tmp_path, monkeypatch):
    ledger = Ledger.open(str(tmp_path))
    ledger.record("k1", {"state": "done"})
    before = open(ledger.path).read()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        ledger.record("k2", {"state": "done"})
    assert open(ledger.path).read() == before                   # whole, and the old one
    assert json.loads(before)["items"] == {"k1": {"state": "done"}}
    ledger.close()


def test_atomic_write_replaces_whole_files(tmp_path):
    path = str(tmp_path / "f.json")
    atomic_write(path, b"one")
    atomic_write(path, b"two")
    assert open(path, "rb").read() == b"two"
    assert os.listdir(tmp_path) == ["f.json"]                   # no temporary file left


def test_one_runner_per_folder(tmp_path):
    a = Ledger.open(str(tmp_path))
    with pytest.raises(LedgerLocked, match="another realiz3d-batch is running"):
        Ledger.open(str(tmp_path))
    a.close()
    Ledger.open(str(tmp_path)).close()


class FakeServer:
    """Answers like ComfyUI's /prompt, /history, /queue; ``fail``: seeds whose prompts fail."""

    def __init__(self, fail=()):
        self.fail, self.history_entries, self.submitted, self.pending = set(fail), {}, [], []

    def submit(self, prompt, prompt_id, extra_data=None):
        self.submitted.append(prompt_id)
        seed = prompt["1"]["inputs"]["seed"]
        ok = seed not in self.fail
        self.history_entries[prompt_id] = {"status": {"status_str": "success" if ok else "error", "messages": [
            ["execution_start", {"timestamp": 1000}],
            ["execution_success", {"timestamp": 1250}] if ok else
            ["execution_error", {"exception_type": "ValueError", "exception_message": f"bad seed {seed}"}]]},
            "outputs": {}}
        return prompt_id

    def history(self, prompt_id):
        return self.history_entries.get(prompt_id)

    def queue(self):
        return set(), set(self.pending)

    def delete_pending(self, ids):
        pass

    def interrupt(self, pid):
        pass


WF = {"1": {"class_type": "KSampler", "inputs": {"seed": 0}}}


def runner(server, out, seeds, retries=1, retry_failed=True):
    manifest = cross_product({"seed": seeds})
    return BatchRunner(server, None, WF, {"seed": [Target("1", "seed", "INT")]}, manifest, out,
                       BatchOptions(retries=retries, poll=0.0, progress=False, retry_failed=retry_failed),
                       log=lambda line: None)


def test_retries_then_records_the_error_and_goes_on(tmp_path):
    server = FakeServer(fail={1})
    s = runner(server, str(tmp_path), [0, 1, 2], retries=2).run()
    assert (s.done, s.failed, s.ran) == (2, 1, 3)
    assert len(server.submitted) == 5                            # 3 items, 2 retries of the failing one
    rows = [json.loads(line) for line in open(tmp_path / "index.jsonl")]
    assert [r["state"] for r in rows] == ["done", "failed", "done"]
    assert rows[1]["error"] == "ValueError: bad seed 1" and rows[1]["attempts"] == 3
    assert rows[0]["seconds"] == 0.25


def test_rerun_skips_done_retries_failed_and_adopts_finished_prompts(tmp_path):
    server = FakeServer(fail={1})
    runner(server, str(tmp_path), [0, 1], retries=0).run()
    assert len(server.submitted) == 2
    server.fail.clear()
    s = runner(server, str(tmp_path), [0, 1, 2], retries=0).run()
    assert (s.skipped, s.done, s.failed) == (1, 3, 0)            # seed 0 skipped; seed 1 retried; seed 2 new
    assert len(server.submitted) == 4
    # a prompt that finished on the server after its runner was killed is taken, not run again
    r = runner(server, str(tmp_path), [0, 1, 2, 3], retries=0)
    ledger_id = json.load(open(tmp_path / "ledger.json"))["batch_id"]
    prep = r.prepare(r.manifest.items[3])
    pid = prompt_uuid(ledger_id, prep.key, 0)
    server.submit({"1": {"inputs": {"seed": 3}}}, pid)           # as the killed run had queued it
    n = len(server.submitted)
    s = r.run()
    assert (s.done, s.ran, s.skipped) == (4, 1, 3) and len(server.submitted) == n
    # --skip-failed keeps recorded errors
    server.fail.add(9)
    runner(server, str(tmp_path / "b"), [9], retries=0).run()
    n = len(server.submitted)
    s = runner(server, str(tmp_path / "b"), [9], retries=0, retry_failed=False).run()
    assert (s.skipped, s.failed) == (1, 1) and len(server.submitted) == n


def test_prompt_ids_are_canonical_uuids():
    import uuid

    pid = prompt_uuid("b", "k", 0)
    assert str(uuid.UUID(pid)) == pid and pid != prompt_uuid("b", "k", 1) != prompt_uuid("c", "k", 0)
