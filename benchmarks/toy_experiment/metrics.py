"""The two measures of the toy experiment, each a small CNN trained in the script.

- Realism: a real-vs-synthetic classifier. It is trained on VAE round trips of both domains
  (what the generator can express at best), so that the VAE's own blur does not count as
  "synthetic"; realism of a set of images = its mean predicted probability of "real".
- Control fidelity: a foreground segmenter (object vs background), trained on VAE round trips
  of both domains with their ground-truth silhouettes, so it works on photos and flat renders
  alike; fidelity = IoU of its mask (probability > 0.5) with the control's silhouette (> 0.5).
Both report their held-out quality, so a reader can judge how far to trust them.
Both judge images box-filtered down to at most JUDGE_SIZE px (and masks likewise), so their cost
does not grow with the generator's image size.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


JUDGE_SIZE = 32


def judge_view(a: np.ndarray) -> np.ndarray:
    """[N, S, S(, 3)] box-filtered to JUDGE_SIZE when S is a multiple of it (else as it is)."""
    s = a.shape[1]
    if s <= JUDGE_SIZE or s % JUDGE_SIZE:
        return a
    f = s // JUDGE_SIZE
    return a.reshape(a.shape[0], JUDGE_SIZE, f, JUDGE_SIZE, f, *a.shape[3:]).mean(axis=(2, 4)).astype(np.float32)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(judge_view(images))).permute(0, 3, 1, 2) * 2 - 1


class DomainClassifier(nn.Module):
    """[B, 3, S, S] in [-1, 1] -> logit of "real" [B]."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.net = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.SiLU(), nn.Conv2d(w, 2 * w, 3, 2, 1), nn.SiLU(),
                                 nn.Conv2d(2 * w, 4 * w, 3, 2, 1), nn.SiLU(), nn.Conv2d(4 * w, 4 * w, 3, 2, 1),
                                 nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 1))

    def forward(self, x):
        return self.net(x)[:, 0]


class Segmenter(nn.Module):
    """[B, 3, S, S] in [-1, 1] -> foreground logits [B, S, S] (a two-level U-Net)."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.SiLU(), nn.Conv2d(w, w, 3, padding=1), nn.SiLU())
        self.enc2 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, 2, 1), nn.SiLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=2,
                                                                                      dilation=2), nn.SiLU(),
                                  nn.Conv2d(2 * w, 2 * w, 3, padding=4, dilation=4), nn.SiLU())
        self.dec = nn.Sequential(nn.Conv2d(3 * w, w, 3, padding=1), nn.SiLU(), nn.Conv2d(w, 1, 1))

    def forward(self, x):
        a = self.enc1(x)
        b = F.interpolate(self.enc2(a), size=a.shape[-2:], mode="bilinear", align_corners=False)
        return self.dec(torch.cat([a, b], 1))[:, 0]


def _fit(model, xs, ys, steps, batch, lr, loss_fn, seed, log, name):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(len(xs), (batch,), generator=g)
        x, y = xs[idx], ys[idx]
        if torch.rand(1, generator=g).item() < 0.5:
            x, y = x.flip(-1), (y.flip(-1) if y.dim() > 1 else y)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"{name} step {step}/{steps} loss {loss.item():.4f}")
    return model.eval()


def train_classifier(real: np.ndarray, synthetic: np.ndarray, steps: int = 400, seed: int = 0, log=print):
    """real, synthetic: [N, S, S, 3] in [0, 1]. Returns the classifier (eval mode)."""
    torch.manual_seed(seed)
    xs = torch.cat([_nchw(real), _nchw(synthetic)])
    ys = torch.cat([torch.ones(len(real)), torch.zeros(len(synthetic))])
    return _fit(DomainClassifier(), xs, ys, steps, 64, 3e-3, F.binary_cross_entropy_with_logits, seed, log,
                "classifier")


@torch.no_grad()
def real_probability(classifier: DomainClassifier, images: np.ndarray) -> np.ndarray:
    """[N] probability of "real" per image."""
    return torch.sigmoid(classifier(_nchw(images))).numpy()


def train_segmenter(images: np.ndarray, masks: np.ndarray, steps: int = 600, seed: int = 0, log=print):
    """images [N, S, S, 3] in [0, 1], masks [N, S, S] in [0, 1] (soft edges are targets as they are)."""
    torch.manual_seed(seed)
    return _fit(Segmenter(), _nchw(images), torch.from_numpy(np.ascontiguousarray(judge_view(masks))), steps, 32, 3e-3,
                F.binary_cross_entropy_with_logits, seed, log, "segmenter")


@torch.no_grad()
def segment(segmenter: Segmenter, images: np.ndarray) -> np.ndarray:
    """[N, S, S] boolean foreground (probability > 0.5)."""
    return (torch.sigmoid(segmenter(_nchw(images))) > 0.5).numpy()


def iou(pred: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """[N] IoU of boolean predictions with soft masks thresholded at 0.5."""
    gt = judge_view(masks) > 0.5
    inter = (pred & gt).sum(axis=(1, 2))
    union = (pred | gt).sum(axis=(1, 2))
    return inter / np.maximum(union, 1)
