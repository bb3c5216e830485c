"""Train from a YAML config: ``python scripts/train.py CONFIG.yaml [--resume CKPT] [--set key=value ...]``.

Several GPUs: ``accelerate launch --num_processes N scripts/train.py CONFIG.yaml``.
See training/README.md for the recipes, folder formats and the files written.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pack_import import import_pack  # noqa: E402

import_pack("realiz3d")

from realiz3d.training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
