"""realiz3d-batch against the real host with the tiny model, and Load Mesh Folder.

The batch: 6 meshes (one of them broken) x 2 prompts x 2 seeds = 24 items through RefAny3D at a
CPU size (one 16 px view, one step), run as the command a user runs (a subprocess), killed with
SIGKILL mid-way, resumed and stopped with Ctrl-C (SIGINT), resumed to the end. The server's
/history is the witness that no item ran twice. The meshes live outside the server's folders, so
every file goes through /upload/image and every output comes back through /view.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import trimesh
from PIL import Image

from comfy_host import ROOT, error_message, load_workflow
from pack_loader import with_pack_loader
from workflow_format import with_defaults
from realiz3d.loading import load_pipeline_folder, write_tiny_set
from realiz3d.refany3d.tiny_weights import write_tiny_refany3d

PROMPTS = ["a red chair", "a brass lamp"]
SEEDS = [0, 1]
GOOD = ["box", "ball", "can", "cone", "capsule"]
BROKEN = "broken"
SETS = ["--set", "mesh=Load Mesh (Realiz3D).mesh_file", "--set", "prompt=10.text", "--set", "seed=4.seed"]
#: the batch's images on the server: each execution of an item's prompt writes one more file there
BATCH_PREFIX = "batch24/image"
#: RefAny3D at a size a CPU runs in a fraction of a second with the tiny model
CHEAP = {"views": 1, "condition_size": 16, "width": 16, "height": 16, "steps": 1, "image_cfg": 1.0}


def cheap_workflow(prefix: str = "batch/image") -> dict:
    wf = with_pack_loader(load_workflow("api/refany3d_from_mesh.json"))
    wf["4"]["inputs"].update(CHEAP)
    wf["5"]["inputs"]["filename_prefix"] = prefix
    del wf["6"], wf["7"]                     # the image only: no point map, no point cloud
    return wf


@pytest.fixture(scope="module")
def tiny_model(server, tmp_path_factory):
    """The tiny model under the template's names (as tests/e2e/test_refany3d.py installs it)."""
    models = os.path.join(server.base, "models")
    if not os.path.isdir(os.path.join(models, "diffusers", "FLUX.1-dev")):
        tiny = write_tiny_set(str(tmp_path_factory.mktemp("tiny")))
        shutil.copytree(tiny.diffusers_folder, os.path.join(models, "diffusers", "FLUX.1-dev"), dirs_exist_ok=True)
        write_tiny_refany3d(os.path.join(models, "refany3d"), load_pipeline_folder(tiny.diffusers_folder).transformer)


def write_meshes(folder: str) -> dict:
    os.makedirs(folder, exist_ok=True)
    shapes = {"box": trimesh.creation.box(), "ball": trimesh.creation.icosphere(1),
              "can": trimesh.creation.cylinder(0.5, 1.5, sections=12),
              "cone": trimesh.creation.cone(0.6, 1.2, sections=12),
              "capsule": trimesh.creation.capsule(1.0, 0.4, count=[8, 8])}
    paths = {}
    for name, mesh in shapes.items():
        paths[name] = os.path.join(folder, f"{name}.glb")
        mesh.export(paths[name])
    paths[BROKEN] = os.path.join(folder, f"{BROKEN}.glb")
    with open(paths[BROKEN], "wb") as f:
        f.write(b"glTF but not really")
    return paths


def runner_env(tmp_path) -> dict:
    """`python -m realiz3d.batch` as after `pip install -e .`: the checkout importable as realiz3d."""
    link_dir = tmp_path / "pkg"
    link_dir.mkdir(exist_ok=True)
    if not (link_dir / "realiz3d").exists():
        os.symlink(ROOT, link_dir / "realiz3d")
    return dict(os.environ, PYTHONPATH=str(link_dir), PYTHONUNBUFFERED="1")


def start_runner(args, env, log):
    return subprocess.Popen([sys.executable, "-m", "realiz3d.batch", *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def ledger_items(out) -> dict:
    try:
        with open(os.path.join(out, "ledger.json")) as f:
            return json.load(f)["items"]          # always whole JSON: written atomically
    except FileNotFoundError:
        return {}


def wait_for(proc, out, n_recorded, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if len(ledger_items(out)) >= n_recorded:
            return
        assert proc.poll() is None, "the runner ended early"
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {n_recorded} items recorded in {timeout} s")


def batch_history(server, batch_id) -> list[dict]:
    """The history entries of this batch's prompts (their extra_data says so)."""
    found = []
    for entry in server.get("/history").values():
        extra = entry["prompt"][3].get("realiz3d_batch")
        if extra and extra["batch"] == batch_id:
            found.append({"key": extra["item"], "status": entry["status"]["status_str"], "entry": entry})
    return found


@pytest.fixture(scope="module")
def batch(server, tiny_model, tmp_path_factory):
    """The 24-item batch, run three times: SIGKILL after 6 items, SIGINT after 6 more, then to the end."""
    tmp = tmp_path_factory.mktemp("batch")
    meshes = write_meshes(str(tmp / "meshes"))
    wf_path = tmp / "workflow.json"
    wf_path.write_text(json.dumps(cheap_workflow(BATCH_PREFIX)))
    out = str(tmp / "out")
    args = [str(wf_path), "--url", server.url, "--out", out, "--meshes", str(tmp / "meshes"),
            *sum((["--prompt", p] for p in PROMPTS), []), "--seeds", ",".join(map(str, SEEDS)), *SETS,
            "--in-flight", "2", "--retries", "1", "--no-progress"]
    env = runner_env(tmp)
    runs = []
    with open(tmp / "run1.log", "w") as log:
        proc = start_runner(args, env, log)
        wait_for(proc, out, 6)
        proc.send_signal(signal.SIGKILL)
        runs.append(proc.wait(30))
    killed_at = len(ledger_items(out))
    with open(tmp / "run2.log", "w") as log:
        proc = start_runner(args, env, log)
        wait_for(proc, out, killed_at + 6)
        proc.send_signal(signal.SIGINT)
        runs.append(proc.wait(120))
    stopped_at = len(ledger_items(out))
    with open(tmp / "run3.log", "w") as log:
        proc = start_runner(args, env, log)
        runs.append(proc.wait(600))
    logs = [(tmp / f"run{i}.log").read_text() for i in (1, 2, 3)]
    with open(os.path.join(out, "ledger.json")) as f:
        batch_id = json.load(f)["batch_id"]
    with open(os.path.join(out, "index.jsonl")) as f:
        index = [json.loads(line) for line in f]
    return {"out": out, "meshes": meshes, "runs": runs, "logs": logs, "index": index, "batch_id": batch_id,
            "killed_at": killed_at, "stopped_at": stopped_at, "workflow": cheap_workflow(BATCH_PREFIX)}


def test_killed_and_resumed_batch_runs_each_item_once(server, batch):
    runs, logs, index = batch["runs"], batch["logs"], batch["index"]
    assert runs[0] == -signal.SIGKILL
    assert runs[1] == 130, logs[1][-3000:]                         # Ctrl-C: stopped cleanly
    assert "stopping" in logs[1]
    assert runs[2] == 1, logs[2][-3000:]                           # ended, with the broken mesh's items failed
    assert 6 <= batch["killed_at"] < batch["stopped_at"] < 24
    assert "skipped" in logs[2]
    # the index is complete: every item, in manifest order, done or with its error
    assert [row["item"] for row in index] == list(range(24))
    combos = [(m, p, s) for m in sorted(GOOD + [BROKEN]) for p in PROMPTS for s in SEEDS]
    for row, (mesh, prompt, seed) in zip(index, combos):
        assert os.path.basename(row["inputs"]["mesh"]) == f"{mesh}.glb"
        assert (row["inputs"]["prompt"], row["inputs"]["seed"]) == (prompt, seed)
        if mesh == BROKEN:
            assert row["state"] == "failed" and row["outputs"] == []
            assert "Realiz3D input error" in row["error"] and "mesh_file" in row["error"], row["error"]
        else:
            assert row["state"] == "done" and row["error"] is None, row
            assert [os.path.basename(p)[:6] for p in row["outputs"]] == ["image_"]
            assert os.path.isfile(os.path.join(batch["out"], row["outputs"][0]))
            assert row["seconds"] is not None and row["finished"]
    # the server's own record: every good item ran exactly once over the three runs. A prompt
    # run again under the same id would replace its history entry, but not the file it wrote.
    written = os.listdir(os.path.join(server.base, "output", os.path.dirname(BATCH_PREFIX)))
    assert len(written) == 20, sorted(written)
    history = batch_history(server, batch["batch_id"])
    done = {}
    for h in history:
        if h["status"] == "success":
            done[h["key"]] = done.get(h["key"], 0) + 1
    good = {row["key"] for row in index if row["state"] == "done"}
    assert len(good) == 20 and set(done) == good, (len(done), len(good))
    assert all(n == 1 for n in done.values()), done
    # no half-written item folders left behind
    assert not [d for d in os.listdir(os.path.join(batch["out"], "items")) if d.endswith(".partial")]
    sheet = Image.open(os.path.join(batch["out"], "contact_sheet.png"))
    assert sheet.size[0] >= 5 * 128 and sheet.size[1] >= 5 * 128


def test_files_went_through_upload_and_view(server, batch):
    """The meshes are outside the server's folders: they reached input/ through /upload/image, and
    the outputs came back through /view byte for byte."""
    for name, path in batch["meshes"].items():
        assert not os.path.commonpath([path, server.base]) == server.base
        sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
        uploaded = os.path.join(server.base, "input", "realiz3d_batch", sha[:16], f"{name}.glb")
        assert open(uploaded, "rb").read() == open(path, "rb").read(), name
    entries = {h["key"]: h["entry"] for h in batch_history(server, batch["batch_id"]) if h["status"] == "success"}
    for row in batch["index"]:
        if row["state"] != "done":
            continue
        files = server.output_files(entries[row["key"]])
        assert len(files) == 1
        assert open(files[0], "rb").read() == open(os.path.join(batch["out"], row["outputs"][0]), "rb").read()


def free(server):
    """Drop ComfyUI's node cache (as tests/e2e/test_refany3d.py does), so the next prompt really runs."""
    server.post("/free", {"unload_models": True, "free_memory": True})
    h = server.run({"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                                "color": int(time.time() * 1000) % 2 ** 24}},
                    "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}})
    assert h["status"]["status_str"] == "success", error_message(h)


def test_an_item_equals_a_single_run(server, batch):
    row = next(r for r in batch["index"] if r["state"] == "done" and r["inputs"]["seed"] == 1)
    path = row["inputs"]["mesh"]
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    wf = batch["workflow"]
    wf["1"]["inputs"]["mesh_file"] = f"realiz3d_batch/{sha[:16]}/{os.path.basename(path)}"
    wf["10"]["inputs"]["text"] = row["inputs"]["prompt"]
    wf["4"]["inputs"]["seed"] = row["inputs"]["seed"]
    wf["5"]["inputs"]["filename_prefix"] = "single/image"
    free(server)
    h = server.run(wf)
    assert h["status"]["status_str"] == "success", error_message(h)
    (single,) = server.output_files(h)
    a = np.asarray(Image.open(single))
    b = np.asarray(Image.open(os.path.join(batch["out"], row["outputs"][0])))
    assert a.shape == (16, 16, 3) and np.array_equal(a, b)
    other = next(r for r in batch["index"] if r["state"] == "done" and r["key"] != row["key"])
    assert not np.array_equal(a, np.asarray(Image.open(os.path.join(batch["out"], other["outputs"][0]))))


def test_a_changed_workflow_runs_again_and_a_bad_mapping_names_its_node(server, batch, tmp_path):
    out = str(tmp_path / "out")
    wf = cheap_workflow()
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(wf))
    env = runner_env(tmp_path)
    one = ["--meshes", os.path.join(os.path.dirname(batch["meshes"]["box"]), "box.glb"), "--prompt", "x",
           "--seeds", "3", "--url", server.url, "--out", out, "--no-progress"]
    r = subprocess.run([sys.executable, "-m", "realiz3d.batch", str(path), *one, *SETS], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "realiz3d.batch", str(path), *one, *SETS], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "1 skipped" in r.stderr, r.stderr[-3000:]
    wf["4"]["inputs"]["guidance"] = 2.5                              # a changed workflow: the item runs again
    path.write_text(json.dumps(wf))
    r = subprocess.run([sys.executable, "-m", "realiz3d.batch", str(path), *one, *SETS], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "1 ran now, 0 skipped" in r.stderr, r.stderr[-3000:]
    # refused at validation (below the input's minimum): recorded with the server's reason, not retried
    r = subprocess.run([sys.executable, "-m", "realiz3d.batch", str(path), *one, *SETS, "--param", "4.steps=0",
                        "--out", out + "_refused"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    with open(os.path.join(out + "_refused", "index.jsonl")) as f:
        (row,) = [json.loads(line) for line in f]
    assert row["state"] == "failed" and row["attempts"] == 1, row
    assert row["error"].startswith("the server refused the prompt") and "steps" in row["error"], row["error"]
    bad = SETS[:-1] + ["seed=Realiz3D Sampler.seed"]
    r = subprocess.run([sys.executable, "-m", "realiz3d.batch", str(path), *one, *bad], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "node 'Realiz3D Sampler' is not in the workflow" in r.stderr, r.stderr[-3000:]
    bad = SETS[:-1] + ["seed=4.sed"]
    r = subprocess.run([sys.executable, "-m", "realiz3d.batch", str(path), *one, *bad], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "has no input 'sed'" in r.stderr, r.stderr[-3000:]


def test_ui_format_workflows_convert_with_titles(server):
    """A workflow as the front end saves it converts to the API graph, node titles kept for --set."""
    from realiz3d.batch.mapping import resolve_node
    from realiz3d.batch.workflow import load_workflow as batch_workflow

    info = server.get("/object_info")
    ui = batch_workflow(os.path.join(ROOT, "example_workflows", "refany3d_from_mesh.json"), info)
    api = with_defaults(load_workflow("api/refany3d_from_mesh.json"), info)   # the UI file sets every widget
    assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in ui.items()} == api
    assert ui["1"]["_meta"]["title"] == "Load Mesh (Realiz3D)"
    assert resolve_node(ui, "RefAny3D Sample (Realiz3D)", info) == "4"


# -- Load Mesh Folder ---------------------------------------------------------------------------

def folder_graph(subfolder, pattern="*"):
    return {
        "1": {"class_type": "Realiz3DLoadMeshFolder", "inputs": {"subfolder": subfolder, "pattern": pattern,
                                                                 "normalize": True}},
        "2": {"class_type": "Realiz3DCameraRig", "inputs": {"preset": "orbit", "num_views": 1, "elevation": 10.0,
              "radius": 4.0, "fov": 45.0, "start_azimuth": 0.0, "projection": "perspective", "ortho_height": 2.4,
              "poses_json": "[]"}},
        "3": {"class_type": "Realiz3DRenderViews", "inputs": {"mesh": ["1", 0], "cameras": ["2", 0], "width": 16,
              "height": 16, "rgb": "unlit albedo", "ambient": 0.3, "normal_frame": "world", "smooth_normals": True,
              "background": 1.0, "backend": "raycast"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 2], "filename_prefix": ["1", 2]}},
    }


@pytest.fixture(scope="module")
def mesh_folder(server):
    """input/batch_folder: box, ball, can, and in nested/ the six meshes with the broken one."""
    folder = os.path.join(server.base, "input", "batch_folder")
    write_meshes(os.path.join(folder, "nested"))
    for name in ("box", "ball", "can"):
        shutil.copy(os.path.join(folder, "nested", f"{name}.glb"), os.path.join(folder, f"{name}.glb"))
    return "batch_folder"


def test_load_mesh_folder_runs_downstream_once_per_mesh(server, mesh_folder):
    info = server.get("/object_info")["Realiz3DLoadMeshFolder"]
    assert info["output_is_list"] == [True, True, True, True]
    assert mesh_folder in info["input"]["required"]["subfolder"][1]["options"]
    h = server.run(folder_graph(mesh_folder))                  # '*': the folder itself, not nested/
    assert h["status"]["status_str"] == "success", error_message(h)
    files = server.output_files(h)
    # one normal map per mesh of the folder itself, each under the mesh's own name
    assert sorted(os.path.basename(p).split("_")[0] for p in files) == ["ball", "box", "can"], files
    normals = [np.asarray(Image.open(p)) for p in sorted(files)]
    assert not np.array_equal(normals[0], normals[1])


def test_load_mesh_folder_bad_subfolder_gets_the_packs_message(server, mesh_folder):
    for subfolder, words in (("no_such_folder", "'no_such_folder' is not a folder in ComfyUI's input folder"),
                             ("../", "points outside ComfyUI's input folder")):
        reply = server.run(folder_graph(subfolder))
        message = error_message(reply)
        assert "Realiz3D input error: subfolder:" in message and words in message, message
    reply = server.run(folder_graph(mesh_folder, "*.fbx"))
    message = error_message(reply)
    assert "Realiz3D input error: pattern: '*.fbx' matches no mesh" in message, message
    # the broken file among the nested ones stops the prompt with Load Mesh's own message
    h = server.run(folder_graph(mesh_folder, "**/*.glb"))
    assert h["status"]["status_str"] == "error" and "Realiz3D input error: mesh_file" in error_message(h)


def test_own_host_with_the_tiny_model(tmp_path):
    """The README's worked example: no --url, so the runner starts the pack's own headless ComfyUI,
    installs the tiny model there (--tiny) and copies files onto its disk."""
    meshes = write_meshes(str(tmp_path / "meshes"))
    out = str(tmp_path / "out")
    args = ["refany3d_from_mesh", "--tiny", "--out", out, "--meshes", meshes["box"], "--meshes", meshes["ball"],
            "--prompt", "a red chair", "--seeds", "7", *SETS, "--no-progress",
            *sum((["--param", f"4.{k}={v}"] for k, v in CHEAP.items()), [])]
    r = subprocess.run([sys.executable, "-m", "realiz3d.batch", *args], env=runner_env(tmp_path),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "running headless" in r.stderr and "files copied to" in r.stderr
    with open(os.path.join(out, "index.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [row["state"] for row in rows] == ["done", "done"]
    kinds = sorted(os.path.basename(p).split("_")[0] for p in rows[0]["outputs"])
    assert kinds == ["image", "pointcloud", "pointmap"]           # the template's three savers
    assert Image.open(os.path.join(out, rows[0]["outputs"][0])).size == (16, 16)
