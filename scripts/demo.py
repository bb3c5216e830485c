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

Then the trained demo model (assets/realiz3d_demo: the toy experiment's 64 px model, its
Realiz3D LoRAs and shifters and its standard fine-tuning LoRAs, benchmarks/toy_experiment) is
installed into the host's models/ folders and loaded by the pack's loaders (Load Flux Model on
its diffusers folder, Load Control LoRA, Load Domain Shifter); the sample mesh's views (the
texture_mesh template's camera rig, camera-frame normal maps at 64 px) are its controls, and
OUT_DIR/realiz3d/sheet.png shows side by side, one column per view: the control maps, standard
fine-tuning, Realiz3D in the real domain, Realiz3D in the synthetic domain.

Usage: python scripts/demo.py OUT_DIR   (scripts/demo.sh installs the host first)
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image

from comfy_host import ComfyServer, copy_outputs, error_message, load_workflow
from pack_loader import pack_loader_inputs, with_pack_loader
from pack_import import import_pack

#: the RefAny3D template at a size a 2-core CPU runs in seconds with the tiny model
CPU_SIZE = {"views": 8, "condition_size": 128, "width": 128, "height": 128, "steps": 8}
#: the texturing template likewise (8 views of 128 px as one 512 x 256 grid)
CPU_TEXTURE = {"view_size": 128, "steps": 8}
#: the trained demo model (benchmarks/toy_experiment/export_demo.py writes it)
DEMO_ASSETS = os.environ.get("REALIZ3D_DEMO_ASSETS") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "realiz3d_demo")
#: camera distance of the sheet's views (texture_mesh uses 3.2, where the box fills the frame)
SHEET_RADIUS = 5.5
#: the sheet's rows: (label, file prefix)
SHEET_ROWS = (("control (normal map)", "control"), ("standard fine-tuning", "standard_ft"),
              ("Realiz3D, real domain", "realiz3d_real"), ("Realiz3D, synthetic domain", "realiz3d_synthetic"))


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


def install_demo_model(base: str, assets: str = DEMO_ASSETS) -> dict:
    """Copy the shipped demo model into the host's models/ folders (diffusers, loras,
    realiz3d_shifters); returns its demo_model.json."""
    with open(os.path.join(assets, "demo_model.json")) as f:
        info = json.load(f)
    for sub in ("diffusers", "loras", "realiz3d_shifters"):
        shutil.copytree(os.path.join(assets, sub), os.path.join(base, "models", sub), dirs_exist_ok=True)
    return info


def sheet_workflow(info: dict, views: int = 8) -> dict:
    """API graph: the sample mesh's views under the texture_mesh template's camera rig, their
    camera-frame normal maps, and per view three Realiz3D Sample runs of the demo model (standard
    fine-tuning's LoRAs; Realiz3D's LoRAs with its shifters in the real and in the synthetic domain)."""
    template = load_workflow("api/texture_mesh.json")
    size, files = info["size"], {k: v.split("/")[-1] for k, v in info["files"].items()}
    # the toy model learned objects that sit in the frame with a margin (benchmarks/toy_experiment/data.py):
    # the rig steps back so the sample mesh does too
    rig = {**template["2"]["inputs"], "num_views": views, "radius": SHEET_RADIUS}
    wf = {"1": template["1"], "2": {**template["2"], "inputs": rig},
          "3": {"class_type": "Realiz3DRenderViews",
                "inputs": {**template["12"]["inputs"], "mesh": ["1", 0], "cameras": ["2", 0], "width": size,
                           "height": size, "normal_frame": "camera"}},
          "4": {"class_type": "Realiz3DLoadFluxModel", "inputs": pack_loader_inputs(info["model"])},
          "5": {"class_type": "Realiz3DFluxTextEncode",
                "inputs": {"clip": ["4", 1], "text": info["caption"], "max_sequence_length": info["max_sequence_length"]}},
          "6": {"class_type": "Realiz3DLoadControlLoRA",
                "inputs": {"model": ["4", 0], "lora": files["B_control"], "target_lora": files["B_target"]}},
          "7": {"class_type": "Realiz3DLoadControlLoRA",
                "inputs": {"model": ["4", 0], "lora": files["A_control"], "target_lora": files["A_target"]}},
          "8": {"class_type": "Realiz3DLoadDomainShifter", "inputs": {"model": ["4", 0], "shifter": files["shifters"]}},
          "9": {"class_type": "Realiz3DDomainSchedule",
                "inputs": {"preset": "real", "k_layers": 0, "switch_fraction": 0.0, "grid_json": ""}},
          "10": {"class_type": "Realiz3DDomainSchedule",
                 "inputs": {"preset": "synthetic", "k_layers": 0, "switch_fraction": 0.0, "grid_json": ""}},
          "11": {"class_type": "SaveImage", "inputs": {"images": ["3", 2], "filename_prefix": "realiz3d_sheet/control"}}}
    runs = {"standard_ft": {"control": ["6", 0]},
            "realiz3d_real": {"control": ["7", 0], "shifter": ["8", 0], "schedule": ["9", 0]},
            "realiz3d_synthetic": {"control": ["7", 0], "shifter": ["8", 0], "schedule": ["10", 0]}}
    nid = 100
    for v in range(views):
        view = str(nid)
        wf[view] = {"class_type": "ImageFromBatch", "inputs": {"image": ["3", 2], "batch_index": v, "length": 1}}
        nid += 1
        for name, extra in runs.items():
            sample, save = str(nid), str(nid + 1)
            wf[sample] = {"class_type": "Realiz3DSample",
                          "inputs": {"model": ["4", 0], "positive": ["5", 0], "vae": ["4", 2], "control_images": [view, 0],
                                     "width": size, "height": size, "batch": 1, "steps": info["steps"],
                                     "guidance": info["guidance"], "seed": v, **extra}}
            wf[save] = {"class_type": "SaveImage",
                        "inputs": {"images": [sample, 0], "filename_prefix": f"realiz3d_sheet/{name}_view{v:02d}"}}
            nid += 2
    return wf


def realiz3d_sheet(paths: list[str], out: str, scale: int = 2) -> None:
    """Rows SHEET_ROWS (labelled), one column per view."""
    from PIL import ImageDraw
    rows = []
    for label, prefix in SHEET_ROWS:
        files = sorted(p for p in paths if os.path.basename(p).startswith(prefix + "_"))
        if not files:
            continue
        tiles = [np.asarray(Image.open(p).convert("RGB")) for p in files]
        if prefix == "control" and len(tiles) == 1:
            tiles = [tiles[0]]
        rows.append((label, np.concatenate(tiles, 1)))
    if not rows:
        return
    h = rows[0][1].shape[0] * scale
    width = max(r.shape[1] for _, r in rows) * scale
    label_w = 170
    sheet = Image.new("RGB", (label_w + width, h * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, row) in enumerate(rows):
        im = Image.fromarray(row).resize((row.shape[1] * scale, row.shape[0] * scale), Image.NEAREST)
        sheet.paste(im, (label_w, i * h))
        draw.text((6, i * h + h // 2 - 6), label, fill=(0, 0, 0))
    sheet.save(out)


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
        with ComfyServer(base, startup_timeout=600) as server:   # a busy 2-core machine starts it slowly
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
                demo_info = install_demo_model(base)
                demo = run(server, sheet_workflow(demo_info), os.path.join(out_dir, "realiz3d"),
                           "realiz3d sheet (trained demo model)")
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
    sheet = os.path.join(out_dir, "realiz3d", "sheet.png")
    controls = [p for p in demo if os.path.basename(p).startswith("control_")]
    split_controls(controls, os.path.join(out_dir, "realiz3d"))
    realiz3d_sheet([p for p in demo if not os.path.basename(p).startswith("control_")]
                   + sorted(os.path.join(out_dir, "realiz3d", n) for n in os.listdir(os.path.join(out_dir, "realiz3d"))
                            if n.startswith("control_view")), sheet)
    m = demo_info["measured_on_toy_eval_controls"]
    print(f"realiz3d sheet (trained demo model {demo_info['model']}, {demo_info['size']} px, {demo_info['steps']} "
          f"steps): {len(demo)} files in {os.path.abspath(os.path.join(out_dir, 'realiz3d'))}")
    print(f"  sheet (rows: {'; '.join(r for r, _ in SHEET_ROWS)}; one column per view): {sheet}")
    print(f"  on the toy's held-out controls this model measured: {m}")
    return 0


def split_controls(paths: list[str], out_dir: str) -> None:
    """SaveImage writes one file per batch item; name them control_viewNN for the sheet."""
    for i, p in enumerate(sorted(paths)):
        shutil.copyfile(p, os.path.join(out_dir, f"control_view{i:02d}.png"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo_output"))
