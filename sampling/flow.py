"""Flow-matching pieces shared by the pack's samplers: image <-> packed latent tokens, Flux's
timestep schedule with dynamic shift, one FlowMatch Euler scheduler per target."""
from __future__ import annotations

import numpy as np
import torch


def encode_images(pipe, images: torch.Tensor, generator: torch.Generator, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """images [V, H, W, 3] in [0, 1] -> packed latent tokens [V, N, 64] and ids [N, 3]."""
    x = images.permute(0, 3, 1, 2).to(pipe.vae.device, pipe.vae.dtype) * 2.0 - 1.0
    dist = pipe.vae.encode(x).latent_dist
    lat = dist.sample(generator) if mode == "sample" else dist.mean
    lat = (lat - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    v, c, h, w = lat.shape
    tokens = pipe._pack_latents(lat, v, c, h, w)
    ids = pipe._prepare_latent_image_ids(v, h // 2, w // 2, lat.device, lat.dtype)
    return tokens, ids


def decode_latents(pipe, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Packed latents [B, N, 64] -> images [B, H, W, 3] in [0, 1]."""
    lat = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
    lat = lat / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    img = pipe.vae.decode(lat.to(pipe.vae.dtype), return_dict=False)[0]
    return (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu()


def flux_timesteps(pipe, steps: int, image_seq_len: int, device, count: int = 1):
    """(timesteps, [count schedulers]): Flux's sigmas 1 -> 1/steps with the dynamic shift mu of
    the target's token count; one scheduler per target so each keeps its own step index."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    cfg = pipe.scheduler.config
    mu = calculate_shift(image_seq_len, cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                         cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    sigmas = np.linspace(1.0, 1 / steps, steps)
    schedulers = [FlowMatchEulerDiscreteScheduler.from_config(cfg) for _ in range(count)]
    for sch in schedulers:
        timesteps, _ = retrieve_timesteps(sch, steps, device, None, sigmas, mu=mu)
    return timesteps, schedulers
