"""Bake benchmark: 8 views at 512 x 512 back-projected into 1024 and 2048 texel textures.

Times bake_texture on the sample mesh and on an 82k-face icosphere (on which xatlas crashes, so
the grid layout is used), both fills side by side in one run, after a warm-up: cold (a mesh
seen for the first time: UV unwrap in a child process and texel rasterisation included) and
warm (new views of the same mesh: the atlas is reused); medians of several runs, the split into
stages for one warm run, and the 2048 / 1024 ratio. Writes benchmarks/results/bake.json.

Usage: .cache/host/venv/bin/python benchmarks/bake.py [--repeats 5]
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from pack_import import import_pack  # noqa: E402

import_pack()
import numpy as np  # noqa: E402
import torch  # noqa: E402,F401  (imported up front as in ComfyUI: not part of the timings)
import trimesh  # noqa: E402

from realiz3d.renderers import Mesh, MeshPart, load_mesh, normalize, orbit_rig, render_views  # noqa: E402
import realiz3d.renderers.bake as bakemod  # noqa: E402
from realiz3d.renderers.bake import BakeSettings, bake_texture  # noqa: E402


def measure(mesh, views, cams, size, fill, repeats):
    """cold: a mesh seen for the first time (UV unwrap in the xatlas child process, texel
    rasterisation, then the bake); warm: new views of the same mesh (atlas cached)."""
    settings = BakeSettings(texture_size=size, fill=fill)
    bake_texture(mesh, views, cams, BakeSettings(texture_size=64))  # warm-up: GL context, imports
    cold = []
    for _ in range(repeats):
        bakemod._ATLAS_CACHE.clear()
        t0 = time.perf_counter()
        bake_texture(mesh, views, cams, settings)
        cold.append(time.perf_counter() - t0)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = bake_texture(mesh, views, cams, settings)
        times.append(time.perf_counter() - t0)
    stages = []
    t_last = [time.perf_counter()]

    def tick(done, total):
        now = time.perf_counter()
        stages.append(now - t_last[0])
        t_last[0] = now
    t_last[0] = time.perf_counter()
    bake_texture(mesh, views, cams, settings, progress=tick)
    return {"cold_median_s": statistics.median(cold), "median_s": statistics.median(times), "min_s": min(times),
            "coverage": res.coverage,
            "first_view_incl_setup_s": stages[0], "per_view_s": float(np.median(stages[1:-1])),
            "fill_and_dilate_s": stages[-1]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    sample = normalize(load_mesh(os.path.join(ROOT, "assets", "sample_mesh.glb")))
    s = trimesh.creation.icosphere(subdivisions=6)
    sphere = normalize(Mesh([MeshPart(np.asarray(s.vertices, float), np.asarray(s.faces, np.int64),
                                      vertex_normals=np.asarray(s.vertex_normals, float))], source="icosphere6"))
    cams = orbit_rig(8, elevation_deg=20.0, radius=3.0, yfov_deg=40.0)
    results = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "python": platform.python_version()},
               "views": len(cams), "view_size": 512, "repeats": args.repeats, "cases": {}}
    print(f"{'mesh':22s} {'texture':>7s} {'fill':9s} {'cold s':>7s} {'warm s':>7s} {'min s':>7s} {'per view':>9s} "
          f"{'fill s':>7s} {'coverage':>8s}")
    for name, mesh in (("sample (44 faces)", sample), (f"icosphere ({sphere.num_faces} faces)", sphere)):
        views = render_views(mesh, cams, 512, 512, lit=True).lit
        case = {}
        for size in (1024, 2048):
            for fill in ("pull-push", "nearest"):
                r = measure(mesh, views, cams, size, fill, args.repeats)
                case[f"{size}/{fill}"] = r
                print(f"{name:22s} {size:7d} {fill:9s} {r['cold_median_s']:7.3f} {r['median_s']:7.3f} {r['min_s']:7.3f} "
                      f"{r['per_view_s']:9.3f} {r['fill_and_dilate_s']:7.3f} {r['coverage']:8.3f}")
        case["2048_over_1024"] = case["2048/pull-push"]["median_s"] / case["1024/pull-push"]["median_s"]
        case["nearest_over_pull_push_1024"] = case["1024/nearest"]["median_s"] / case["1024/pull-push"]["median_s"]
        print(f"{name:22s} 2048 / 1024 time: {case['2048_over_1024']:.2f}x; nearest / pull-push at 1024: "
              f"{case['nearest_over_pull_push_1024']:.2f}x")
        results["cases"][name] = case
    out = os.path.join(ROOT, "benchmarks", "results", "bake.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print("written", os.path.relpath(out, ROOT))


if __name__ == "__main__":
    main()
