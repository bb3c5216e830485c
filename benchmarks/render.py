"""Render benchmark: 8 views x (RGB, depth, normal, point map, mask) at 512 x 512.

Times the whole job the Render Views node does (render_views + the image conversions), for
both backends side by side in one run, after a warm-up; reports the median of several runs,
the peak memory the job allocates (tracemalloc, which sees numpy's buffers), and the ray-cast
backend's time as a ratio of pyrender's. Writes benchmarks/results/render.json.

Usage: .cache/host/venv/bin/python benchmarks/render.py [--repeats 7]
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from pack_import import import_pack  # noqa: E402

import_pack()
import numpy as np  # noqa: E402
import trimesh  # noqa: E402

from realiz3d.renderers import (Mesh, MeshPart, depth_image, load_mesh, normal_image, normalize,  # noqa: E402
                                refany3d_rig, render_views)


def job(mesh, cams, backend, size):
    b = render_views(mesh, cams, size, size, backend=backend, lit=False)
    return b.albedo, depth_image(b), normal_image(b), b.points_normalized, b.mask.astype(np.float32)


def measure(mesh, cams, backend, size, repeats):
    job(mesh, cams, backend, size)                     # warm-up: GL context, shader compile, caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        job(mesh, cams, backend, size)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    job(mesh, cams, backend, size)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_mib": peak / 2 ** 20}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    sample = normalize(load_mesh(os.path.join(ROOT, "assets", "sample_mesh.glb")))
    s = trimesh.creation.icosphere(subdivisions=6)
    sphere = normalize(Mesh([MeshPart(np.asarray(s.vertices, float), np.asarray(s.faces, np.int64),
                                      vertex_normals=np.asarray(s.vertex_normals, float))], source="icosphere6"))
    cams = refany3d_rig(8)
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "processor": platform.processor()},
               "views": len(cams), "size": args.size, "repeats": args.repeats, "cases": {}}
    print(f"{'mesh':22s} {'backend':9s} {'median s':>9s} {'min s':>7s} {'peak MiB':>9s}")
    for name, mesh in (("sample (44 faces)", sample), (f"icosphere ({mesh_faces(sphere)} faces)", sphere)):
        case = {}
        for backend in ("pyrender", "raycast"):
            r = measure(mesh, cams, backend, args.size, args.repeats)
            case[backend] = r
            print(f"{name:22s} {backend:9s} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['peak_mib']:9.1f}")
        case["raycast_over_pyrender"] = case["raycast"]["median_s"] / case["pyrender"]["median_s"]
        print(f"{name:22s} raycast / pyrender time: {case['raycast_over_pyrender']:.2f}x")
        results["cases"][name] = case
    out = os.path.join(ROOT, "benchmarks", "results", "render.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print("written", os.path.relpath(out, ROOT))


def mesh_faces(mesh):
    return mesh.num_faces


if __name__ == "__main__":
    main()
