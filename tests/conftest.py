"""Makes the checkout importable as the package ``realiz3d`` (no ComfyUI needed)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from pack_import import import_pack  # noqa: E402

import_pack("realiz3d")
