"""How much of the domain gap stage 1 learns, per stage-1 recipe: train only the domain shifters
(stage 1) on the cached base of a full run, then sample without control in the synthetic and
the real domain and judge realism. A shifter that learned the whole gap takes realism to ~0 in
the synthetic domain and keeps ~1 in the real one. Cheap: stage 1 trains no backbone weight.

Usage: .cache/host/venv/bin/python benchmarks/toy_experiment/stage1_probe.py --work /tmp/realiz3d_toy
       [--threads 1] [--variants NAME ...]
Writes benchmarks/results/toy_experiment_stage1_probe.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402  (imports the pack)
import torch  # noqa: E402

import data  # noqa: E402
import evaluate  # noqa: E402
import recipes  # noqa: E402

#: stage-1 recipes: overrides of run.Sizes
PROBES = {
    "paper (bias, rank 8, lr 2e-3)": {},
    "bias, rank 8, lr 1e-2": {"shifter_lr": 1e-2},
    "token, rank 16, lr 2e-3": {"shifter_variant": "token", "shifter_rank": 16},
    "token, rank 16, lr 1e-2": {"shifter_variant": "token", "shifter_rank": 16, "shifter_lr": 1e-2},
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/realiz3d_toy")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="stage-1 steps (default Sizes.stage1_steps)")
    ap.add_argument("--variants", nargs="*", default=None, choices=sorted(PROBES))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    z = run.Sizes()
    d = run.make_data(z, args.work)
    ctx = run.shared_stage(z, args.work, d)
    pipe, classifier, segmenter = ctx["pipe"], ctx["classifier"], ctx["segmenter"]
    masks = d["eval"]["mask"][:z.n_sweep]
    rows = []
    for name in args.variants or PROBES:
        zz = run.Sizes(**{**asdict(z), **PROBES[name], **({"stage1_steps": args.steps} if args.steps else {})})
        cfg = recipes._config(args.work, "probe_stage1", "stage1", zz, zz.stage1_steps, zz.shifter_lr, 0,
                              os.path.join(args.work, "probe", name.replace(" ", "_").replace(",", "")),
                              shifters={"rank": zz.shifter_rank, "embed_dim": 32, "variant": zz.shifter_variant})
        result, seconds = recipes._train(cfg, pipe, run.log)
        from realiz3d.adapters import load_shifters, make_schedule
        shifters = load_shifters(result.outputs["shifters"])
        row = {"variant": name, "recipe": PROBES[name], "steps": zz.stage1_steps, "train_s": seconds,
               "final_loss": sum(result.losses[-50:]) / len(result.losses[-50:])}
        for preset in ("real", "synthetic"):
            imgs = evaluate.sample_set(pipe, data.CAPTION, None, count=z.n_sweep, size=z.size, steps=z.sample_steps,
                                       guidance=z.guidance, shifters=shifters, schedule=make_schedule(preset))
            row[f"realism_{preset}"] = evaluate.score(imgs, masks, classifier, segmenter)["realism"]
        run.log(f"probe {row}")
        rows.append(row)
    stem = os.path.join(run.RESULTS, "toy_experiment_stage1_probe")
    with open(stem + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    lines = ["| stage-1 recipe | steps | realism, synthetic domain (want 0) | realism, real domain (want 1) | "
             "final loss | train s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['steps']} | {r['realism_synthetic']:.3f} | {r['realism_real']:.3f} | "
              f"{r['final_loss']:.4f} | {r['train_s']:.0f} |" for r in rows]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
