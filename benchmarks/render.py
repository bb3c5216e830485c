"""Render benchmark: 8 views x (RGB, depth, normal, point map, mask) at 512 x 512.

Side by side in one run, after a warm-up, medians of several runs, one thread (OMP, MKL,
OpenBLAS and torch threads = 1, also in the GL worker, which inherits the environment):
- face ids alone (the visibility backend's only job) for GL in this process, GL in the pack's
  worker process (frames through the memory-mapped file, and through the pipe), and ray casting;
- the whole job the Render Views node does (render_views + the image conversions) for the same
  backends, with the peak memory the job allocates here (tracemalloc, which sees numpy's buffers);
- ratios: worker / in-process GL (the cost of the process boundary), ray cast / in-process GL;
- the worker's first-use start (a fresh process up to its first frame), several times;
- the worker's two frame transports on frames of twice the size.
Writes benchmarks/results/render.json.

Usage: .cache/host/venv/bin/python benchmarks/render.py [--repeats 7]
"""
import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"      # before numpy loads; the worker inherits it

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from pack_import import import_pack  # noqa: E402

import_pack()
import numpy as np  # noqa: E402
import trimesh  # noqa: E402

from realiz3d.renderers import (Mesh, MeshPart, depth_image, load_mesh, normal_image, normalize,  # noqa: E402
                                refany3d_rig, render_views)


from realiz3d.renderers import backend_pyrender, backend_raycast, gl_worker  # noqa: E402

#: full-job backends (names of render_views) and face-id routes, in table order
JOB_BACKENDS = ("pyrender (in-process)", "pyrender (worker)", "raycast")
ID_ROUTES = ("in-process GL", "worker GL (mmap)", "worker GL (pipe)", "raycast")


def job(mesh, cams, backend, size):
    b = render_views(mesh, cams, size, size, backend=backend, lit=False)
    return b.albedo, depth_image(b), normal_image(b), b.points_normalized, b.mask.astype(np.float32)


def interleaved(fns: dict, repeats: int) -> dict:
    """Median and min seconds of each callable, run in turn (one of each per round), so that the
    load of a shared machine drifts over all of them alike; a warm-up round first."""
    for fn in fns.values():
        fn()                                           # warm-up: GL context, shader compile, caches
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(t), "min_s": min(t)} for k, t in times.items()}


def peak_mib(fn) -> float:
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2 ** 20


def visibility(route, mesh, clients):
    v, f = mesh.vertices, mesh.faces
    if route == "in-process GL":
        return backend_pyrender.PyrenderVisibility(v, f)
    if route == "raycast":
        return backend_raycast.RaycastVisibility(v, f)
    return gl_worker.WorkerVisibility(v, f, client=clients[route])


def worker_start(mesh, cams, size, times):
    """A fresh worker each time: process start, imports, GL context, mesh, first frame."""
    out = []
    for _ in range(times):
        client = gl_worker.GLWorker()
        t0 = time.perf_counter()
        gl_worker.WorkerVisibility(mesh.vertices, mesh.faces, client=client).face_ids(cams[0], size, size)
        out.append({"first_frame_s": time.perf_counter() - t0, "ready_s": client.last_start_s})
        client.close()
    return {"first_frame_median_s": statistics.median(r["first_frame_s"] for r in out),
            "ready_median_s": statistics.median(r["ready_s"] for r in out), "runs": out,
            "platform": "see cases"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--starts", type=int, default=3, help="fresh worker starts to time")
    args = ap.parse_args()
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    sample = normalize(load_mesh(os.path.join(ROOT, "assets", "sample_mesh.glb")))
    s = trimesh.creation.icosphere(subdivisions=6)
    sphere = normalize(Mesh([MeshPart(np.asarray(s.vertices, float), np.asarray(s.faces, np.int64),
                                      vertex_normals=np.asarray(s.vertex_normals, float))], source="icosphere6"))
    cams = refany3d_rig(8)
    clients = {"worker GL (mmap)": gl_worker.GLWorker(transport="mmap"),
               "worker GL (pipe)": gl_worker.GLWorker(transport="pipe")}
    start = worker_start(sample, cams, args.size, args.starts)
    start["platform"] = clients["worker GL (mmap)"].platform
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "processor": platform.processor(), "threads": 1},
               "views": len(cams), "size": args.size, "repeats": args.repeats, "worker_start": start, "cases": {}}
    print(f"GL worker first use ({start['platform']}): ready in {start['ready_median_s']:.2f} s, first frame "
          f"{start['first_frame_median_s']:.2f} s (median of {args.starts} fresh starts)")
    for name, mesh in (("sample (44 faces)", sample), (f"icosphere ({mesh_faces(sphere)} faces)", sphere)):
        case = {}
        print(f"\n{name}: {len(cams)} views x {args.size} px")
        vis = {route: visibility(route, mesh, clients) for route in ID_ROUTES}
        case["face_ids"] = interleaved({route: (lambda v=v: [v.face_ids(c, args.size, args.size) for c in cams])
                                        for route, v in vis.items()}, args.repeats)
        jobs = {backend: (lambda b=backend: job(mesh, cams, b, args.size)) for backend in JOB_BACKENDS}
        case["render_views"] = interleaved(jobs, args.repeats)
        for backend, fn in jobs.items():
            case["render_views"][backend]["peak_mib"] = peak_mib(fn)
        print(f"  {'face ids':26s} {'median s':>9s} {'min s':>7s}")
        for route, r in case["face_ids"].items():
            print(f"  {route:26s} {r['median_s']:9.3f} {r['min_s']:7.3f}")
        print(f"  {'render_views + images':26s} {'median s':>9s} {'min s':>7s} {'peak MiB':>9s}")
        for backend, r in case["render_views"].items():
            print(f"  {backend:26s} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['peak_mib']:9.1f}")
        ids = {k: r["median_s"] for k, r in case["face_ids"].items()}
        full = {k: r["median_s"] for k, r in case["render_views"].items()}
        case["ratios"] = {
            "face_ids worker(mmap) / in-process": ids["worker GL (mmap)"] / ids["in-process GL"],
            "face_ids worker(pipe) / in-process": ids["worker GL (pipe)"] / ids["in-process GL"],
            "face_ids raycast / in-process": ids["raycast"] / ids["in-process GL"],
            "render_views worker / in-process": full["pyrender (worker)"] / full["pyrender (in-process)"],
            "render_views raycast / in-process": full["raycast"] / full["pyrender (in-process)"],
        }
        for k, v in case["ratios"].items():
            print(f"  {k:40s} {v:6.2f}x")
        results["cases"][name] = case
    # the transports alone, on larger frames (4 MiB each), where the copy through the pipe shows
    tsize = 2 * args.size
    vis = {route: visibility(route, sample, clients) for route in ("worker GL (mmap)", "worker GL (pipe)")}
    results["transport"] = interleaved({route: (lambda v=v: [v.face_ids(c, tsize, tsize) for c in cams])
                                        for route, v in vis.items()}, args.repeats)
    results["transport"]["size"] = tsize
    print(f"\ntransport, sample mesh, {len(cams)} views x {tsize} px: " + ", ".join(
        f"{route} {r['median_s']:.3f} s" for route, r in results["transport"].items() if route != "size"))
    for c in clients.values():
        c.close()
    out = os.path.join(ROOT, "benchmarks", "results", "render.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print("written", os.path.relpath(out, ROOT))


def mesh_faces(mesh):
    return mesh.num_faces


if __name__ == "__main__":
    main()
