"""Export one seed of the toy experiment as the demo model (assets/realiz3d_demo, fp16):

    assets/realiz3d_demo/
      diffusers/realiz3d-toy-flux/     the base model as a diffusers Flux folder (toy transformer,
                                       toy 8x VAE, tiny text encoders): Load Flux Model reads it
      loras/realiz3d_toy_control.safetensors, realiz3d_toy_target.safetensors
                                       Realiz3D's stage-2 control and target LoRAs (Load Control LoRA)
      loras/standard_ft_toy_control.safetensors, standard_ft_toy_target.safetensors
                                       standard fine-tuning's LoRAs (same data and budget)
      realiz3d_shifters/realiz3d_toy_shifters.safetensors
                                       Realiz3D's stage-1 domain shifters (Load Domain Shifter)
      demo_model.json                  what it is: sizes, caption, seed, recipe, measured numbers

Usage: .cache/host/venv/bin/python benchmarks/toy_experiment/export_demo.py --work /tmp/realiz3d_toy
       [--seed 0] [--variant token] [--out assets/realiz3d_demo]
The folder names under the output are the ComfyUI models/ folder names, so a host installs it by
copying each into its models/ folder (scripts/demo.py does).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, HERE)
from pack_import import import_pack  # noqa: E402

import_pack()
import torch  # noqa: E402

MODEL_NAME = "realiz3d-toy-flux"
FILES = {"A_control": ("loras", "realiz3d_toy_control.safetensors"),
         "A_target": ("loras", "realiz3d_toy_target.safetensors"),
         "B_control": ("loras", "standard_ft_toy_control.safetensors"),
         "B_target": ("loras", "standard_ft_toy_target.safetensors"),
         "shifters": ("realiz3d_shifters", "realiz3d_toy_shifters.safetensors")}


def _fp16_copy(src: str, dst: str) -> None:
    """A safetensors file with its float tensors in fp16 and its metadata kept."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(src, framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    save_file(tensors, dst, metadata=meta)


def export(work: str, seed: int, variant: str, out: str) -> dict:
    import toy_model
    import toy_vae
    import data
    judges = torch.load(os.path.join(work, "judges.pt"), weights_only=False)
    vae = toy_vae.build_vae(0, judges["vae_shift"], judges["vae_scale"])
    vae.load_state_dict(judges["vae"])
    pipe = toy_model.build_pipeline(vae.eval(), tokenizer_dir=os.path.join(work, "tokenizer"))
    pipe.transformer.load_state_dict(torch.load(os.path.join(work, "base.pt"), weights_only=False)["base"])
    if os.path.isdir(out):
        shutil.rmtree(out)
    folder = os.path.join(out, "diffusers", MODEL_NAME)
    for m in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        m.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    pipe.tokenizer_2.save_pretrained(os.path.join(folder, "tokenizer_2"))
    seed_dir = os.path.join(work, f"seed{seed}")
    with open(os.path.join(seed_dir, f"A_{variant}", "points.json")) as f:
        a = json.load(f)
    with open(os.path.join(seed_dir, "B", "points.json")) as f:
        b = json.load(f)
    sources = {"A_control": a["outputs"]["control_lora"], "A_target": a["outputs"]["target_lora"],
               "B_control": b["outputs"]["control_lora"], "B_target": b["outputs"]["target_lora"]}
    for key, src in sources.items():
        _fp16_copy(src, os.path.join(out, *FILES[key]))
    os.makedirs(os.path.join(out, FILES["shifters"][0]), exist_ok=True)
    shutil.copy(a["outputs"]["shifters"], os.path.join(out, *FILES["shifters"]))
    pick = lambda rows, label: next(({"realism": round(r["realism"], 3), "iou": round(r["iou"], 3)}
                                     for r in rows if r["label"] == label), None)
    info = {"model": MODEL_NAME, "caption": data.CAPTION, "size": 64, "max_sequence_length": 16, "guidance": 1.0,
            "steps": 16, "seed": seed, "variant": variant, "recipe": a["recipe"],
            "files": {k: "/".join(v) for k, v in FILES.items()},
            "measured_on_toy_eval_controls": {"A real": pick(a["rows"], "real"),
                                              "A synthetic": pick(a["rows"], "synthetic"),
                                              "B control x1": pick(b["rows"], "control x1")}}
    with open(os.path.join(out, "demo_model.json"), "w") as f:
        json.dump(info, f, indent=1)
    total = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(out) for n in ns)
    info["bytes"] = total
    print(json.dumps(info, indent=1))
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/realiz3d_toy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", default="token")
    ap.add_argument("--out", default=os.path.join(ROOT, "assets", "realiz3d_demo"))
    args = ap.parse_args(argv)
    export(args.work, args.seed, args.variant, args.out)


if __name__ == "__main__":
    main()
