"""A small Flux-layout VAE (16 latent channels, diffusers AutoencoderKL) trained briefly on the
toy images so that latents carry the images: the random tiny VAE of loading/tiny.py decodes
noise, which would make every image metric meaningless.

Like FLUX.1's VAE: 4 resolution levels (8x downsampling, what the pack's samplers assume), so a
64 px image is an 8 x 8 latent = 16 transformer tokens; unlike it, narrow channels.
The latent statistics of the training set set ``shift_factor`` / ``scaling_factor`` (unit
variance after scaling), as Flux's own factors do for its VAE.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

VAE_SIZES = dict(block_out_channels=[16, 16, 32, 32], layers_per_block=1, sample_size=64, norm_num_groups=8,
                 mid_block_add_attention=False,
                 down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)


def build_vae(seed: int = 0, shift: float = 0.0, scale: float = 1.0):
    from diffusers import AutoencoderKL

    from realiz3d.loading import configs
    torch.manual_seed(seed)
    return AutoencoderKL.from_config({**configs.load("flux_vae"), **VAE_SIZES, "shift_factor": shift,
                                      "scaling_factor": scale})


def train_vae(images: np.ndarray, steps: int, batch: int = 32, lr: float = 2e-3, kl_weight: float = 1e-6,
              seed: int = 0, log=print):
    """images [N, S, S, 3] in [0, 1] (photos, renders and control maps together).
    Returns (vae in eval mode with fitted shift/scale, list of reconstruction MSEs per logged step)."""
    vae = build_vae(seed)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    history, t0 = [], time.time()
    vae.train()
    for step in range(steps):
        idx = torch.randint(len(x_all), (batch,), generator=g)
        x = x_all[idx]
        if torch.rand(1, generator=g).item() < 0.5:          # flips: more variety for free
            x = x.flip(-1)
        dist = vae.encode(x).latent_dist
        z = dist.sample(g)
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        loss = mse + kl_weight * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            history.append((step, mse.item()))
            log(f"vae step {step}/{steps} mse {mse.item():.5f} ({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        lat = torch.cat([vae.encode(x_all[i:i + 256]).latent_dist.mean for i in range(0, len(x_all), 256)])
    shift, std = float(lat.mean()), float(lat.std())
    fitted = build_vae(seed, shift=shift, scale=1.0 / std)
    fitted.load_state_dict(vae.state_dict())
    return fitted.eval(), history


@torch.no_grad()
def roundtrip(vae, images: np.ndarray) -> np.ndarray:
    """Encode (posterior mean) and decode [N, S, S, 3] in [0, 1]: what the generator can express."""
    out = []
    for i in range(0, len(images), 256):
        x = torch.from_numpy(images[i:i + 256]).permute(0, 3, 1, 2) * 2 - 1
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample
        out.append(((rec.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out).astype(np.float32)
