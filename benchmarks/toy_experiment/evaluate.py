"""Controlled sampling of the held-out controls and the two measures for one method."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from metrics import iou, real_probability, segment

CAPTION_TOKENS = 8


def sample_set(pipe, prompt: str, controls: Optional[np.ndarray], count: int, size: int, steps: int,
               guidance: float, control_adapters=(), target_adapters=(), shifters=None, schedule=None) -> np.ndarray:
    """Sample ``count`` images [count, S, S, 3]; sample i uses seed i and the control maps
    controls[i] ([count, C, S, S, 3], or None for unconditional sampling).

    target_adapters: LoRA adapters on the target branch (stage 2 trains a ``target`` LoRA
    beside the ``control`` one). When the pack's sample_realiz3d does not take them (it applied
    adapters to the control branches only at first), the local copy of its loop below is used.
    """
    import inspect

    from realiz3d.sampling.realiz3d_sampler import Realiz3DSettings, sample_realiz3d
    native = "target_adapters" in inspect.signature(sample_realiz3d).parameters
    out = []
    for i in range(count):
        s = Realiz3DSettings(steps=steps, guidance=guidance, width=size, height=size, seed=i,
                             max_sequence_length=CAPTION_TOKENS)
        c = None if controls is None else torch.from_numpy(controls[i])
        if target_adapters and not native:
            out.append(_sample_with_target_lora(pipe, prompt, c, s, control_adapters, target_adapters, shifters,
                                                schedule))
        else:
            extra = {"target_adapters": tuple(target_adapters)} if native else {}
            out.append(sample_realiz3d(pipe, prompt, c, s, control_adapters=control_adapters, shifters=shifters,
                                       schedule=schedule, **extra))
    return torch.cat(out).numpy()


@torch.no_grad()
def _sample_with_target_lora(pipe, prompt, controls, s, control_adapters, target_adapters, shifters, schedule):
    """sample_realiz3d's loop (same seeds, latents, timesteps and branches) with adapters on
    the target branch too. Images [1, H, W, 3] in [0, 1]."""
    from realiz3d.adapters import DomainSchedule
    from realiz3d.engine import Branch, FluxEngine
    from realiz3d.sampling.flow import decode_latents, encode_images, flux_timesteps
    gen = torch.Generator().manual_seed(s.seed)
    embeds, pooled, text_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, device="cpu",
                                                  num_images_per_prompt=1, max_sequence_length=s.max_sequence_length)
    tr = pipe.transformer
    latents, ids = pipe.prepare_latents(1, tr.config.in_channels // 4, s.height, s.width, torch.float32, "cpu", gen)
    cond_tokens = None
    if controls is not None:
        cond_tokens, cond_ids = encode_images(pipe, controls.float(), gen, s.condition_latents)
    g = torch.full((1,), s.guidance)
    n_blocks = len(tr.transformer_blocks) + len(tr.single_transformer_blocks)
    timesteps, (scheduler,) = flux_timesteps(pipe, s.steps, latents.shape[1], "cpu")
    engine = FluxEngine(tr, shifters=shifters)
    for i, t in enumerate(timesteps):
        t_b = t.expand(1) / 1000
        domains = None
        if shifters is not None:
            names = (schedule or DomainSchedule("real")).domains(i, len(timesteps), n_blocks)
            domains = [shifters.domain_index(n) for n in names]
        branches = [Branch(embeds, text_ids, t_b, g, is_text=True, name="text"),
                    Branch(latents, ids, t_b, g, tuple(target_adapters), block_domains=domains, name="target")]
        if cond_tokens is not None:
            branches += [Branch(cond_tokens[k:k + 1], cond_ids, torch.zeros(1), torch.ones(1),
                                tuple(control_adapters), name=f"control{k}") for k in range(len(cond_tokens))]
        v = engine(branches, None, pooled, outputs=[1])[1]
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
    return decode_latents(pipe, latents, s.height, s.width)


def score(images: np.ndarray, masks: np.ndarray, classifier, segmenter) -> dict:
    """realism (mean P(real)), its spread, IoU with the masks (mean and median)."""
    p = real_probability(classifier, images)
    ious = iou(segment(segmenter, images), masks)
    return {"realism": float(p.mean()), "realism_std": float(p.std()), "real_share": float((p > 0.5).mean()),
            "iou": float(ious.mean()), "iou_median": float(np.median(ious))}


def timed(fn, *args, **kw):
    t0 = time.time()
    out = fn(*args, **kw)
    return out, time.time() - t0
