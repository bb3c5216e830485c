"""The pack's main job on its embedded default, in a headless ComfyUI: the bundled sample mesh
textured through example_workflows/texture_mesh.json (8 views generated jointly under normal-map
control with domain shifters, baked into a texture, saved as a textured GLB) with a tiny Flux
model, control LoRA and shifters made locally; then the same mesh rendered through
render_sample_mesh.json, and RefAny3D referenced by it through refany3d_from_mesh.json. The
templates load FLUX.1 with ComfyUI's own loaders, which cannot load a tiny model: they run here
through pack_loader.with_pack_loader (the pack's Load Flux Model reading the tiny diffusers folder
in their place). Random tiny weights: the outputs show the pipeline runs end to end, not what real
weights draw.
Outputs are copied to OUT_DIR/texture, OUT_DIR/render and OUT_DIR/refany3d.

Usage: python scripts/demo.py OUT_DIR   (scripts/demo.sh installs the host first)
"""
import os
import sys
import tempfile

import numpy as np
from PIL import Image

from comfy_host import ComfyServer, copy_outputs, error_message, load_workflow
from pack_loader import with_pack_loader
from pack_import import import_pack

#: the RefAny3D template at a size a 2-core CPU runs in seconds with the tiny model
CPU_SIZE = {"views": 8, "condition_size": 128, "width": 128, "height": 128, "steps": 8}
#: the texturing template likewise (8 views of 128 px as one 512 x 256 grid)
CPU_TEXTURE = {"view_size": 128, "steps": 8}


def install_tiny_models(base: str) -> None:
    """The tiny model as models/diffusers/FLUX.1-dev (what with_pack_loader loads), and tiny RefAny3D
    weights, control LoRA and shifters under the names the templates use (models/refany3d/...)."""
    import shutil

    import_pack("realiz3d")
    from realiz3d.loading import load_pipeline_folder, write_tiny_set
    from realiz3d.refany3d.tiny_weights import write_tiny_refany3d

    tiny = write_tiny_set(os.path.join(base, "tiny"))
    shutil.copytree(tiny.diffusers_folder, os.path.join(base, "models", "diffusers", "FLUX.1-dev"))
    transformer = load_pipeline_folder(tiny.diffusers_folder).transformer
    write_tiny_refany3d(os.path.join(base, "models", "refany3d"), transformer)
    install_tiny_realiz3d(base, transformer)


def install_tiny_realiz3d(base: str, transformer) -> None:
    """A control LoRA (models/loras/realiz3d_normal_control.safetensors) and domain shifters
    (models/realiz3d_shifters/realiz3d_shifters.safetensors) for the tiny model, seeded."""
    import shutil

    import torch
    from realiz3d.adapters import DomainShifters, ShifterConfig, save_shifters
    from realiz3d.refany3d.tiny_weights import write_tiny_refany3d

    loras = os.path.join(base, "models", "loras")
    os.makedirs(loras, exist_ok=True)
    lora = write_tiny_refany3d(os.path.join(base, "tiny_control"), transformer, seed=4)[0]
    shutil.copy(lora, os.path.join(loras, "realiz3d_normal_control.safetensors"))
    torch.manual_seed(0)
    shifters = DomainShifters(ShifterConfig.for_transformer(transformer, rank=4, embed_dim=8))
    for p in shifters.parameters():
        torch.nn.init.normal_(p, std=0.1)
    folder = os.path.join(base, "models", "realiz3d_shifters")
    os.makedirs(folder, exist_ok=True)
    save_shifters(shifters, os.path.join(folder, "realiz3d_shifters.safetensors"))


def texture_sheet(paths: list[str], out: str) -> None:
    """Row 1: the generated views; row 2: the textured mesh rendered from the same cameras."""
    rows = []
    for kind in ("texturing_views_", "textured_render_"):
        views = sorted(p for p in paths if os.path.basename(p).startswith(kind))
        if views:
            rows.append(np.concatenate([np.asarray(Image.open(p).convert("RGB").resize((128, 128))) for p in views], 1))
    if rows:
        Image.fromarray(np.concatenate(rows, 0)).save(out)


def contact_sheet(paths: list[str], out: str) -> None:
    """One row per output kind (rgb, pointmap, normal, depth, mask), one column per view."""
    rows = []
    for kind in ("rgb", "pointmap", "normal", "depth", "mask"):
        views = sorted(p for p in paths if os.path.basename(p).startswith(kind + "_") and p.endswith(".png"))
        if views:
            rows.append(np.concatenate([np.asarray(Image.open(p).convert("RGB").resize((128, 128))) for p in views], 1))
    if rows:
        Image.fromarray(np.concatenate(rows, 0)).save(out)


def run(server, workflow: dict, out_dir: str, name: str) -> list[str]:
    print(f"running {name} ...", flush=True)
    history = server.run(workflow)
    if history.get("status", {}).get("status_str") != "success":
        raise RuntimeError(error_message(history) or str(history))
    return copy_outputs(server.output_files(history), out_dir)


def main(out_dir: str) -> int:
    with tempfile.TemporaryDirectory() as base:
        print("building the tiny Flux model, control LoRA, shifters and RefAny3D weights (random, seeded) ...",
              flush=True)
        install_tiny_models(base)
        print("starting a headless ComfyUI ...", flush=True)
        with ComfyServer(base) as server:
            print(f"ComfyUI {server.get('/system_stats')['system']['comfyui_version']} running headless at {server.url}")
            try:
                texturing = with_pack_loader(load_workflow("api/texture_mesh.json"))
                texturing["6"]["inputs"]["k_layers"] = 2          # the tiny model has 4 blocks
                texturing["7"]["inputs"].update(CPU_TEXTURE)
                texturing["12"]["inputs"].update(width=128, height=128)
                textured = run(server, texturing, os.path.join(out_dir, "texture"), "texture_mesh")
                renders = run(server, load_workflow("api/render_sample_mesh.json"), os.path.join(out_dir, "render"),
                              "render_sample_mesh")
                refany3d = with_pack_loader(load_workflow("api/refany3d_from_mesh.json"))
                refany3d["4"]["inputs"].update(CPU_SIZE)
                generated = run(server, refany3d, os.path.join(out_dir, "refany3d"), "refany3d_from_mesh")
            except RuntimeError as exc:
                print("workflow failed:", exc, file=sys.stderr)
                return 1
    tex_sheet = os.path.join(out_dir, "texture", "views_and_renders.png")
    texture_sheet(textured, tex_sheet)
    print(f"texture_mesh (tiny model, 8 views of {CPU_TEXTURE['view_size']} px, {CPU_TEXTURE['steps']} steps): "
          f"{len(textured)} files in {os.path.abspath(os.path.join(out_dir, 'texture'))}")
    for p in textured:
        if p.endswith(".glb") or os.path.basename(p).startswith("texture_"):
            print(f"  {os.path.basename(p)}")
    print(f"  overview (generated views above, textured mesh re-rendered below): {tex_sheet}")
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
