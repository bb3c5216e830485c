"""Command line: ``python scripts/train.py CONFIG.yaml [--resume CKPT] [--set key=value ...]``.

A progress bar (tqdm when installed), a log line every ``train.log_every`` steps, the loss
curve at the end. The first Ctrl-C finishes the current step, saves a checkpoint and the
outputs, and exits; a second one aborts at once. Under ``accelerate launch`` every process
runs this; only the main one prints and writes.
"""
from __future__ import annotations

import argparse
import signal
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train Realiz3D shifters / LoRAs or RefAny3D "
                                                                  "adapters (see training/README.md).")
    parser.add_argument("config", help="YAML config (training/configs/*.yaml are ready to copy)")
    parser.add_argument("--resume", default=None, help="a checkpoint file, or a folder whose newest one is used")
    parser.add_argument("--continue-anyway", action="store_true",
                        help="resume even when the config differs from the checkpoint's (the differences are "
                             "logged); without it such a resume is refused with the differences listed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.lr=1e-4 (repeatable)")
    args = parser.parse_args(argv)

    from ..renderers.errors import InputError
    from .config import load_config
    from .trainer import train

    try:
        cfg = load_config(args.config, args.overrides)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    bar = None
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None

    def write(msg: str) -> None:
        if bar is not None:
            tqdm.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def progress(step: int, total: int) -> None:
        nonlocal bar
        if tqdm is None:
            return
        if bar is None:
            bar = tqdm(total=total, initial=step - 1, unit="step", dynamic_ncols=True)
        bar.update(step - bar.n)

    stop = {"requested": False}

    def on_sigint(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        write("stopping after this step: saving a checkpoint and the outputs (Ctrl-C again to abort)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = train(cfg, progress=progress, should_stop=lambda: stop["requested"], log=write,
                       resume=args.resume, on_change="continue anyway" if args.continue_anyway else "refuse")
    except InputError as exc:
        write(f"error: {exc}")
        return 2
    finally:
        signal.signal(signal.SIGINT, previous)
        if bar is not None:
            bar.close()
    write(("stopped" if result.stopped else "done") + f" after {result.steps} steps; checkpoint {result.checkpoint}")
    for kind, path in result.outputs.items():
        write(f"  {kind}: {path}")
    return 130 if result.stopped else 0
