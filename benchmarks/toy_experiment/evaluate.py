"""Controlled sampling of the held-out controls and the two measures for one method."""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from metrics import iou, real_probability, segment

CAPTION_TOKENS = 16    # as recipes.TEXT_TOKENS


def sample_set(pipe, prompt: str, controls: Optional[np.ndarray], count: int, size: int, steps: int,
               guidance: float, control_adapters=(), target_adapters=(), shifters=None, schedule=None) -> np.ndarray:
    """Sample ``count`` images [count, S, S, 3] with sample_realiz3d; sample i uses seed i and
    the control maps controls[i] ([count, C, S, S, 3], or None for unconditional sampling).
    target_adapters: stage 2's target LoRA on the target branch (control_adapters: its control LoRA)."""
    from realiz3d.sampling.realiz3d_sampler import Realiz3DSettings, sample_realiz3d
    out = []
    for i in range(count):
        s = Realiz3DSettings(steps=steps, guidance=guidance, width=size, height=size, seed=i,
                             max_sequence_length=CAPTION_TOKENS)
        c = None if controls is None else torch.from_numpy(controls[i])
        out.append(sample_realiz3d(pipe, prompt, c, s, control_adapters=tuple(control_adapters), shifters=shifters,
                                   schedule=schedule, target_adapters=tuple(target_adapters)))
    return torch.cat(out).numpy()


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
