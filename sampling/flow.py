"""Flow-matching pieces shared by the pack's samplers: image <-> packed latent tokens, initial
noise, Flux's timestep schedule with dynamic shift, one FlowMatch Euler scheduler per target.
Nothing here depends on which loader made the model (see sampling.runtime)."""
from __future__ import annotations

import numpy as np
import torch


def pack_latents(lat: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] latents -> [B, (h/2)(w/2), 4C] tokens of 2x2 patches (channel, row, col order)."""
    b, c, h, w = lat.shape
    return lat.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents` for an image of ``height`` x ``width`` pixels."""
    b, _, ch = tokens.shape
    h, w = height // 8, width // 8
    x = tokens.view(b, h // 2, w // 2, ch // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, ch // 4, h, w)


def latent_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """RoPE ids [(h/2)(w/2), 3] = (0, patch row, patch col) for latents of h x w."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device, dtype)


def initial_noise(batch: int, channels: int, height: int, width: int, dtype, device,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise tokens [B, N, 4C], ids [N, 3]): the draw diffusers' FluxPipeline.prepare_latents
    makes from a CPU generator, so both model paths start from the same noise."""
    h, w = 2 * (height // 16), 2 * (width // 16)
    noise = torch.randn((batch, channels, h, w), generator=generator, dtype=dtype).to(device)
    return pack_latents(noise), latent_ids(h, w, device, dtype)


def encode_images(codec, images: torch.Tensor, generator: torch.Generator, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """images [V, H, W, 3] in [0, 1] -> packed latent tokens [V, N, 64] and ids [N, 3].
    codec: a sampling.runtime.LatentCodec."""
    lat = codec.encode(images, generator, mode)
    tokens = pack_latents(lat)
    return tokens, latent_ids(lat.shape[2], lat.shape[3], lat.device, lat.dtype)


def decode_latents(codec, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Packed latents [B, N, 64] -> images [B, H, W, 3] in [0, 1]."""
    return codec.decode(unpack_latents(latents, height, width))


def flux_timesteps(config: dict, steps: int, image_seq_len: int, device, count: int = 1):
    """(timesteps, [count schedulers]): Flux's sigmas 1 -> 1/steps with the dynamic shift mu of
    the target's token count; one scheduler per target so each keeps its own step index.
    config: a FlowMatchEulerDiscreteScheduler config (the pipeline's, or the shipped FLUX.1 one)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    mu = calculate_shift(image_seq_len, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                         config.get("base_shift", 0.5), config.get("max_shift", 1.15))
    sigmas = np.linspace(1.0, 1 / steps, steps)
    schedulers = [FlowMatchEulerDiscreteScheduler.from_config(config) for _ in range(count)]
    for sch in schedulers:
        timesteps, _ = retrieve_timesteps(sch, steps, device, None, sigmas, mu=mu)
    return timesteps, schedulers
