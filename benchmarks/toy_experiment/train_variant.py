"""Train and sweep Realiz3D (method A) alone under one recipe variant for one seed, into the
cache that run.py --ablation VARIANT --reuse reads (work/seed<seed>/A_<variant>/points.json).
Lets variants run beside the main run.

Usage: .cache/host/venv/bin/python benchmarks/toy_experiment/train_variant.py VARIANT [--seed 0]
       [--work /tmp/realiz3d_toy] [--threads 1] [--quick]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (imports the pack)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variant", choices=sorted(run.VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    # what a run.py --jobs child does for an --ablation variant: train and sweep, reuse the caches
    run.main(["--seeds", str(args.seed), "--variant", args.variant, "--methods", "A", "--seed-only", "--reuse",
              "--threads", str(args.threads)] + (["--work", args.work] if args.work else [])
             + (["--quick"] if args.quick else []))


if __name__ == "__main__":
    main()
