"""The pack's main job on its embedded default, in a headless ComfyUI: the bundled sample mesh
rendered through example_workflows/render_sample_mesh.json, then RefAny3D referenced by that mesh
through example_workflows/refany3d_from_mesh.json with a tiny Flux model and tiny RefAny3D
weights made locally (random weights: the images show the pipeline runs, not what real
weights draw). Outputs are copied to OUT_DIR.

Usage: python scripts/demo.py OUT_DIR   (scripts/demo.sh installs the host first)
"""
import os
import sys
import tempfile

import numpy as np
from PIL import Image

from comfy_host import ComfyServer, copy_outputs, error_message, load_workflow
from pack_import import import_pack

#: the RefAny3D template at a size a 2-core CPU runs in seconds with the tiny model
CPU_SIZE = {"views": 8, "condition_size": 128, "width": 128, "height": 128, "steps": 8}


def install_tiny_models(base: str) -> None:
    """The tiny model under the names the template uses: models/diffusers/FLUX.1-dev and
    models/refany3d/{default,coord}.safetensors, domain_embedder.pth."""
    import shutil

    import_pack("realiz3d")
    from realiz3d.loading import load_pipeline_folder, write_tiny_set
    from realiz3d.refany3d.tiny_weights import write_tiny_refany3d

    tiny = write_tiny_set(os.path.join(base, "tiny"))
    shutil.copytree(tiny.diffusers_folder, os.path.join(base, "models", "diffusers", "FLUX.1-dev"))
    write_tiny_refany3d(os.path.join(base, "models", "refany3d"), load_pipeline_folder(tiny.diffusers_folder).transformer)


def contact_sheet(paths: list[str], out: str) -> None:
    """One row per output kind (rgb, pointmap, normal, depth, mask), one column per view."""
    rows = []
    for kind in ("rgb", "pointmap", "normal", "depth", "mask"):
        views = sorted(p for p in paths if os.path.basename(p).startswith(kind + "_") and p.endswith(".png"))
        if views:
            rows.append(np.concatenate([np.asarray(Image.open(p).convert("RGB").resize((128, 128))) for p in views], 1))
    if rows:
        Image.fromarray(np.concatenate(rows, 0)).save(out)


def run(server, workflow: dict, out_dir: str) -> list[str]:
    history = server.run(workflow)
    if history.get("status", {}).get("status_str") != "success":
        raise RuntimeError(error_message(history) or str(history))
    return copy_outputs(server.output_files(history), out_dir)


def main(out_dir: str) -> int:
    with tempfile.TemporaryDirectory() as base:
        install_tiny_models(base)
        with ComfyServer(base) as server:
            print(f"ComfyUI {server.get('/system_stats')['system']['comfyui_version']} running headless at {server.url}")
            try:
                renders = run(server, load_workflow("api/render_sample_mesh.json"), os.path.join(out_dir, "render"))
                refany3d = load_workflow("api/refany3d_from_mesh.json")
                refany3d["4"]["inputs"].update(CPU_SIZE)
                generated = run(server, refany3d, os.path.join(out_dir, "refany3d"))
            except RuntimeError as exc:
                print("workflow failed:", exc, file=sys.stderr)
                return 1
    sheet = os.path.join(out_dir, "render", "contact_sheet.png")
    contact_sheet(renders, sheet)
    print(f"render_sample_mesh: {len(renders)} files in {os.path.abspath(os.path.join(out_dir, 'render'))}")
    for kind in ("rgb", "pointmap", "normal", "depth", "mask", "pointcloud"):
        n = sum(os.path.basename(p).startswith(kind + "_") for p in renders)
        print(f"  {kind:10s} {n} file(s)")
    print(f"  overview: {sheet}")
    print(f"refany3d_from_mesh (tiny model, {CPU_SIZE['width']} px, {CPU_SIZE['steps']} steps): "
          f"{len(generated)} files in {os.path.abspath(os.path.join(out_dir, 'refany3d'))}")
    for p in generated:
        print(f"  {os.path.basename(p)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo_output"))
