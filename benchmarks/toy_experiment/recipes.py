"""The training runs of the toy experiment, through the pack's training library
(``realiz3d.training``): one config dict per run, checked by ``load_config``, trained by
``train`` on the pipeline the experiment built; each run's config.yaml is written beside its
outputs by the library.

- base: stage 2 with ``baseline: true``, ``full_finetune: true`` and ``real_ratio: 1``: plain
  full fine-tuning on real images with no control (the library has no separate pretraining
  recipe; this combination is exactly that).
- A: stage 1 (domain shifters), then stage 2 (control + target LoRAs, reassignment with tau_B);
- B: stage 2 with ``baseline: true`` (control + target LoRAs, no shifters).
"""
from __future__ import annotations

import os
import time

import data

TEXT_TOKENS = 16       # the fewest T5 tokens Text Encode (Realiz3D) offers: the demo model samples in ComfyUI


def _config(work: str, name: str, recipe: str, z, steps: int, lr: float, seed: int = 0, out_root: str = None,
            **sections) -> "TrainConfig":
    from realiz3d.training import load_config
    raw = {"recipe": recipe,
           "data": {"real": os.path.join(work, "data", "real"), "synthetic": os.path.join(work, "data", "synthetic"),
                    "controls": list(z.controls), "size": z.size, "caption": data.CAPTION, "real_ratio": 0.5},
           "train": {"steps": steps, "batch_size": z.batch, "lr": lr, "weight_decay": 0.0, "warmup_steps": 50,
                     "guidance": z.guidance, "latents": "mean", "max_sequence_length": TEXT_TOKENS,
                     "log_every": 50, "seed": seed},
           "lora": {"rank": z.lora_rank, "alpha": float(z.lora_rank)},
           "checkpoint": {"every": 10 ** 7, "keep": 1},
           "output": {"dir": os.path.join(out_root or work, name)}}
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return load_config(raw)


def _train(cfg, pipe, log):
    import torch

    from realiz3d.training import train
    torch.manual_seed(cfg.train.seed)          # new adapters draw their init from torch's global generator
    t0 = time.time()
    result = train(cfg, pipe=pipe, log=log)
    return result, time.time() - t0


def _every(losses: list, n: int = 50) -> list:
    """Loss history as (step, mean over the last n steps) pairs: small enough for the JSON."""
    return [(i + n, sum(losses[i:i + n]) / len(losses[i:i + n])) for i in range(0, len(losses), n)]


def pretrain_base(pipe, d: dict, z, work: str, log) -> dict:
    """Base model on the real domain: full fine-tuning, flow matching, no control."""
    cfg = _config(work, "base", "stage2", z, z.base_steps, z.base_lr, data={"real_ratio": 1.0},
                  stage2={"baseline": True, "full_finetune": True})
    result, seconds = _train(cfg, pipe, log)
    return {"losses": _every(result.losses), "train_s": seconds, "outputs": result.outputs}


def train_realiz3d(pipe, z, work: str, log, after_stage1=None, seed: int = 0, name: str = "A",
                   out_root: str = None) -> dict:
    """A: stage 1 then stage 2; returns what sampling needs (shifters, adapters, schedules).
    after_stage1(shifters, stage-1 seconds), when given, runs between the stages (diagnostics).
    Outputs in <out_root or work>/<name>_stage1 and _stage2 (data in work/data); ``seed``: the runs' train.seed and
    the adapters' init."""
    from realiz3d.adapters import load_shifters, make_schedule
    from realiz3d.engine.lora_files import attach_lora
    c1 = _config(work, f"{name}_stage1", "stage1", z, z.stage1_steps, z.shifter_lr, seed, out_root,
                 shifters={"rank": z.shifter_rank, "embed_dim": 32, "variant": z.shifter_variant})
    r1, s1 = _train(c1, pipe, log)
    shifters = load_shifters(r1.outputs["shifters"])
    if after_stage1 is not None:
        after_stage1(shifters, s1)
    c2 = _config(work, f"{name}_stage2", "stage2", z, z.stage2_steps, z.lora_lr, seed, out_root,
                 data={"real_ratio": z.stage2_real_ratio},
                 stage2={"shifters": r1.outputs["shifters"], "tau_b": z.tau_b})
    r2, s2 = _train(c2, pipe, log)
    tr = pipe.transformer
    n = len(tr.transformer_blocks) + len(tr.single_transformer_blocks)
    return {"shifters": shifters,
            "adapters": (attach_lora(tr, r2.outputs["control_lora"], "toyA_control", "control_lora"),),
            "target_adapters": (attach_lora(tr, r2.outputs["target_lora"], "toyA_target", "target_lora"),),
            "schedules": {"real": make_schedule("real", num_blocks=n),
                          f"layer-aware (k={z.k_layers})": make_schedule("layer-aware", k_layers=z.k_layers,
                                                                         num_blocks=n),
                          "synthetic": make_schedule("synthetic", num_blocks=n)},
            "train_s": s1 + s2, "train_s_parts": {"stage1": s1, "stage2": s2},
            "losses": {"stage1": _every(r1.losses), "stage2": _every(r2.losses)}, "outputs": {**r1.outputs,
                                                                                          **r2.outputs}}


def train_baseline(pipe, z, work: str, log, seed: int = 0, name: str = "B_baseline", out_root: str = None) -> dict:
    """B: standard fine-tuning on the same data mix, LoRAs as A's stage 2, no shifters."""
    from realiz3d.engine.lora_files import attach_lora
    cfg = _config(work, name, "stage2", z, z.baseline_steps, z.lora_lr, seed, out_root,
                  stage2={"baseline": True})
    r, s = _train(cfg, pipe, log)
    tr = pipe.transformer
    return {"adapters": (attach_lora(tr, r.outputs["control_lora"], "toyB_control", "control_lora"),),
            "target_adapters": (attach_lora(tr, r.outputs["target_lora"], "toyB_target", "target_lora"),),
            "train_s": s, "losses": _every(r.losses), "outputs": r.outputs}


def detach(pipe, trained: dict) -> None:
    """Remove a method's LoRA adapters from the shared transformer."""
    names = list(trained.get("adapters", ())) + list(trained.get("target_adapters", ()))
    if names:
        pipe.transformer.delete_adapters(names)
