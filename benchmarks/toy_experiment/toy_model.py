"""The toy experiment's base model: a small Flux-family pipeline (FluxTransformer2DModel scaled
down from the shipped FLUX.1-dev config, the tiny text encoders of loading/tiny.py, the toy
VAE of toy_vae.py), and a fallback pretraining loop.

The pretraining loop is plain rectified-flow matching as Flux trains (x_t = (1 - t) x_0 + t e,
target v = e - x_0, t logit-normal), full fine-tuning, on pre-encoded latents, no controls.
It is used only when the training library offers no recipe for "full fine-tuning on real
images alone" (see run.py).
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

TOY_TRANSFORMER = dict(num_layers=2, num_single_layers=4, attention_head_dim=32, num_attention_heads=3,
                       in_channels=64, joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True,
                       axes_dims_rope=[8, 12, 12])
PROMPT_TOKENS = 16       # T5 tokens kept for the (single, constant) toy caption (as recipes.TEXT_TOKENS)


def build_pipeline(vae, seed: int = 0, tokenizer_dir: str = None):
    """A FluxPipeline: toy transformer (random init, std as diffusers inits it), toy VAE, tiny text encoders."""
    from diffusers import FluxTransformer2DModel

    from realiz3d.loading import configs, tiny_components
    comps = tiny_components(seed, tokenizer_dir=tokenizer_dir)
    torch.manual_seed(seed)
    comps.transformer = FluxTransformer2DModel.from_config({**configs.load("flux1-dev_transformer"),
                                                            **TOY_TRANSFORMER})
    comps.vae = vae
    return comps.pipeline()


@torch.no_grad()
def encode_latents(pipe, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """[N, S, S, 3] in [0, 1] -> packed, scaled latent tokens [N, tokens, 64] (posterior mean)."""
    from realiz3d.sampling.flow import encode_images
    from realiz3d.sampling.runtime import DiffusersCodec
    g = torch.Generator().manual_seed(0)
    out = [encode_images(DiffusersCodec(pipe.vae), torch.from_numpy(images[i:i + batch]), g, "mean")[0]
           for i in range(0, len(images), batch)]
    return torch.cat(out)


def pretrain(pipe, latents: torch.Tensor, size: int, steps: int, batch: int = 32, lr: float = 1e-3,
             guidance: float = 1.0, seed: int = 0, log=print, prompt: str = "") -> list:
    """Full fine-tuning of pipe.transformer with flow matching on latents [N, tokens, 64].
    Returns the loss history [(step, loss averaged since the last log)]."""
    tr = pipe.transformer
    with torch.no_grad():
        txt, pooled, txt_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, max_sequence_length=PROMPT_TOKENS)
    side = size // pipe.vae_scale_factor // 2
    img_ids = pipe._prepare_latent_image_ids(1, side, side, "cpu", torch.float32)
    opt = torch.optim.AdamW(tr.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    g = torch.Generator().manual_seed(seed)
    tr.train()
    history, acc, t0 = [], [], time.time()
    for step in range(steps):
        x0 = latents[torch.randint(len(latents), (batch,), generator=g)]
        noise = torch.randn(x0.shape, generator=g)
        t = torch.sigmoid(torch.randn(batch, generator=g))
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        v = tr(hidden_states=xt, encoder_hidden_states=txt.expand(batch, -1, -1),
               pooled_projections=pooled.expand(batch, -1), timestep=t, img_ids=img_ids, txt_ids=txt_ids,
               guidance=torch.full((batch,), guidance), return_dict=False)[0]
        loss = F.mse_loss(v, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tr.parameters(), 1.0)
        opt.step()
        sched.step()
        acc.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            history.append((step, float(np.mean(acc))))
            log(f"pretrain step {step}/{steps} loss {np.mean(acc):.4f} ({time.time() - t0:.0f}s)")
            acc = []
    tr.eval()
    return history
