"""``python -m realiz3d.training CONFIG.yaml ...`` (when the pack is importable as realiz3d)."""
import sys

from .cli import main

sys.exit(main())
