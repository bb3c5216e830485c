"""Batch runner benchmark: what realiz3d-batch costs per item over queueing the same prompts by hand.

Side by side in one run, on one headless ComfyUI (0.3.75 from .cache/host unless COMFY_DIR /
COMFY_PYTHON say otherwise) with the tiny model, one thread (OMP, MKL, OpenBLAS = 1, inherited by
the server), a warm-up prompt first, then rounds in which each variant runs the same N prompts
(RefAny3D, one 16 px view, one step; each variant and round with its own seeds, so nothing comes
from ComfyUI's cache):
- by hand: all N prompts POSTed to /prompt at once, then /history polled until the last ends (the
  server's own throughput; no files fetched);
- the runner with 1 prompt in flight, and with 2: the mesh uploaded, every output downloaded
  through /view, ledger, index and contact sheet written.
Per item: wall time / N; the runner's overhead is its per-item time minus the by-hand one
(goal <= 0.2 s). Medians over the rounds. Writes benchmarks/results/batch.json.

Usage: .cache/host/venv/bin/python benchmarks/batch.py [--items 16] [--rounds 3]
"""
import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"      # before numpy loads; the server inherits it

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from pack_import import import_pack  # noqa: E402

import_pack()
from comfy_host import ComfyServer, error_message, load_workflow  # noqa: E402
from pack_loader import with_pack_loader  # noqa: E402

from realiz3d.batch import BatchOptions, BatchRunner, ComfyClient, cross_product, resolve_targets  # noqa: E402
from realiz3d.batch.transfer import UploadTransfer  # noqa: E402

CHEAP = {"views": 1, "condition_size": 16, "width": 16, "height": 16, "steps": 1, "image_cfg": 1.0}
SETS = ["mesh=Load Mesh (Realiz3D).mesh_file", "seed=4.seed"]


def workflow() -> dict:
    wf = with_pack_loader(load_workflow("api/refany3d_from_mesh.json"))
    wf["4"]["inputs"].update(CHEAP)
    del wf["6"], wf["7"]
    return wf


def install_tiny(base: str) -> None:
    from realiz3d.loading import load_pipeline_folder, write_tiny_set
    from realiz3d.refany3d.tiny_weights import write_tiny_refany3d

    tiny = write_tiny_set(os.path.join(base, "tiny"))
    shutil.copytree(tiny.diffusers_folder, os.path.join(base, "models", "diffusers", "FLUX.1-dev"))
    transformer = load_pipeline_folder(tiny.diffusers_folder).transformer
    write_tiny_refany3d(os.path.join(base, "models", "refany3d"), transformer)


def by_hand(server, wf, mesh_name, seeds) -> float:
    t0 = time.perf_counter()
    ids = []
    for seed in seeds:
        g = json.loads(json.dumps(wf))
        g["1"]["inputs"]["mesh_file"] = mesh_name
        g["4"]["inputs"]["seed"] = seed
        ids.append(server.submit(g)["prompt_id"])
    for pid in ids:
        h = server.wait(pid)
        assert h["status"]["status_str"] == "success", error_message(h)
    return time.perf_counter() - t0


def with_runner(server, wf, mesh_path, seeds, in_flight, out) -> float:
    client = ComfyClient(server.url)
    info = client.object_info()
    manifest = cross_product({"mesh": [mesh_path], "seed": seeds})
    targets = resolve_targets(SETS, wf, info, manifest.columns)
    runner = BatchRunner(client, UploadTransfer(client), wf, targets, manifest, out,
                         BatchOptions(in_flight=in_flight, retries=0, progress=False), log=lambda line: None)
    t0 = time.perf_counter()
    summary = runner.run()
    seconds = time.perf_counter() - t0
    assert summary.done == len(seeds) and summary.failed == 0, summary
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import trimesh

    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "base")
        install_tiny(base)
        mesh_path = os.path.join(tmp, "box.glb")
        trimesh.creation.box().export(mesh_path)
        wf = workflow()
        with ComfyServer(base) as server:
            version = server.get("/system_stats")["system"].get("comfyui_version")
            mesh_name = UploadTransfer(ComfyClient(server.url)).put(mesh_path)
            by_hand(server, wf, mesh_name, [999_999])                      # warm-up: model load, caches
            times = {"by hand": [], "runner, 1 in flight": [], "runner, 2 in flight": []}
            seed = 0
            for r in range(args.rounds):
                for name in times:
                    seeds = list(range(seed, seed + args.items))
                    seed += args.items
                    if name == "by hand":
                        t = by_hand(server, wf, mesh_name, seeds)
                    else:
                        t = with_runner(server, wf, mesh_path, seeds, int(name.split(", ")[1][0]),
                                        os.path.join(tmp, f"out_{r}_{name[-11]}"))
                    times[name].append(t / args.items)
    per_item = {k: statistics.median(v) for k, v in times.items()}
    hand = per_item["by hand"]
    result = {
        "what": f"{args.items} RefAny3D prompts (tiny model, 1 view of 16 px, 1 step) per variant, "
                f"median of {args.rounds} rounds, one thread",
        "comfyui": version, "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "seconds_per_item": per_item,
        "runs_seconds_per_item": times,
        "runner_overhead_per_item_s": {k: v - hand for k, v in per_item.items() if k != "by hand"},
        "items_per_second": {k: 1.0 / v for k, v in per_item.items()},
        "goal_overhead_per_item_s": 0.2,
    }
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    path = os.path.join(ROOT, "benchmarks", "results", "batch.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{'variant':22s} {'s/item':>8s} {'items/s':>8s} {'overhead s/item':>16s}")
    for k, v in per_item.items():
        over = "" if k == "by hand" else f"{v - hand:+.3f}"
        print(f"{k:22s} {v:8.3f} {1 / v:8.2f} {over:>16s}")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
