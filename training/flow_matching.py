"""Rectified-flow matching as Flux is trained and sampled in diffusers.

x_t = (1 - t) x_0 + t e, with t = sigma in [0, 1] (1 = pure noise); the model predicts the
velocity v = e - x_0: FlowMatchEulerDiscreteScheduler steps x_{t'} = x_t + (t' - t) v from
t = 1 down to 0. Timesteps are logit-normal: t = sigmoid(N(mean, std)).
"""
from __future__ import annotations

import torch


def logit_normal(gen: torch.Generator, n: int, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """[n] timesteps (sigma) in (0, 1)."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=gen))


def noisy(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t for tokens [B, N, C] and t [B]."""
    t = t.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
    return (1.0 - t) * x0 + t * noise


def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target e - x_0."""
    return noise - x0


def mse_per_sample(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B] mean squared error of each sample, computed in float32."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)
