"""Run example_workflows/api/render_sample_mesh.json in a headless ComfyUI and collect the results.

Usage: python scripts/demo.py OUT_DIR   (scripts/demo.sh installs the host first)
"""
import os
import sys
import tempfile

import numpy as np
from PIL import Image

from comfy_host import ComfyServer, copy_outputs, error_message, load_workflow


def contact_sheet(paths: list[str], out: str) -> None:
    """One row per output kind (rgb, pointmap, normal, depth, mask), one column per view."""
    rows = []
    for kind in ("rgb", "pointmap", "normal", "depth", "mask"):
        views = sorted(p for p in paths if os.path.basename(p).startswith(kind + "_") and p.endswith(".png"))
        if views:
            rows.append(np.concatenate([np.asarray(Image.open(p).convert("RGB").resize((128, 128))) for p in views], 1))
    if rows:
        Image.fromarray(np.concatenate(rows, 0)).save(out)


def main(out_dir: str) -> int:
    with tempfile.TemporaryDirectory() as base, ComfyServer(base) as server:
        print(f"ComfyUI {server.get('/system_stats')['system']['comfyui_version']} running headless at {server.url}")
        history = server.run(load_workflow("api/render_sample_mesh.json"))
        if history.get("status", {}).get("status_str") != "success":
            print("workflow failed:", error_message(history) or history, file=sys.stderr)
            return 1
        copied = copy_outputs(server.output_files(history), out_dir)
    sheet = os.path.join(out_dir, "contact_sheet.png")
    contact_sheet(copied, sheet)
    print(f"{len(copied)} files written to {os.path.abspath(out_dir)}:")
    for kind in ("rgb", "pointmap", "normal", "depth", "mask", "pointcloud"):
        n = sum(os.path.basename(p).startswith(kind + "_") for p in copied)
        print(f"  {kind:10s} {n} file(s)")
    print(f"  overview: {sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo_output"))
