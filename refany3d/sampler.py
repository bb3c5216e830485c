"""RefAny3D sampling (SPEC.md section 2): FlowMatch Euler with Flux's dynamic shift, guidance
embedding, and image classifier-free guidance between the conditioned pass and a pass whose
condition images are black, for both targets (RGB image and its point map)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..engine import Branch, FluxEngine, KVCache
from ..loading.offload import Offload
from ..renderers.errors import InputError
from ..sampling.flow import decode_latents, encode_images, flux_timesteps, initial_noise
from ..sampling.runtime import as_runtime, encode_prompt, step_memory_bytes
from . import layout
from .weights import RefAny3DWeights


@dataclass
class RefAny3DSettings:
    """steps: denoising steps; guidance: Flux guidance embedding (3.5); image_cfg: scale between
    the conditioned and the black-condition pass (2.0; 1.0 skips that pass); width/height: target
    size in pixels (multiples of 16); batch: images per prompt; seed: noise and condition-latent
    seed; condition_latents: 'sample' (the reference: a draw from the VAE posterior, seeded) or
    'mean'; text_agnostic: the point-map target does not attend to the text; kv_cache: compute
    the conditions' keys and values once and reuse them. RefAny3D's weights were trained with
    conditions that attend to the targets, so this switches both passes to a mask in which the
    conditions see only themselves and their pair: an approximation of the trained model, exact
    for that mask."""

    steps: int = 28
    guidance: float = 3.5
    image_cfg: float = 2.0
    width: int = 512
    height: int = 512
    batch: int = 1
    seed: int = 0
    condition_latents: str = "sample"
    text_agnostic: bool = True
    max_sequence_length: int = 512
    kv_cache: bool = False


def check_settings(s: RefAny3DSettings) -> None:
    for name in ("width", "height"):
        v = getattr(s, name)
        if v < 16 or v % 16:
            raise InputError(name, f"must be a positive multiple of 16 (got {v}); Flux packs 2x2 latent "
                                   "patches of an 8x downsampled image.")
    if s.steps < 1:
        raise InputError("steps", f"must be at least 1 (got {s.steps}).")
    if s.batch < 1:
        raise InputError("batch", f"must be at least 1 (got {s.batch}).")
    if s.condition_latents not in ("sample", "mean"):
        raise InputError("condition_latents", "must be 'sample' or 'mean'.")


@contextlib.contextmanager
def _released(caches):
    """Free the KV caches when the prompt ends, however it ends (cancel included)."""
    try:
        yield
    finally:
        for c in caches:
            if c is not None:
                c.clear()


@torch.no_grad()
def sample(model, weights: RefAny3DWeights, prompt, rgb_views: torch.Tensor, point_views: torch.Tensor,
           settings: RefAny3DSettings, progress: Optional[Callable[[int, int], None]] = None,
           offload: Optional[Offload] = None, compile: bool = False, batch_branches: bool = True):
    """Generate images and point maps referenced by rendered views of a mesh.

    model: a sampling.runtime.FluxRuntime (a host's MODEL and VAE, or the pack's own model), or a
    diffusers FluxPipeline; prompt: a TextConditioning, or a string for the pack's own pipeline;
    rgb_views, point_views: [V, S, S, 3] in [0, 1] (unlit RGB and per-axis point maps).
    offload (FluxPipeline only): keep the weights on the CPU and move each component to
    ``offload.device`` only while it runs. Guidance: the conditioning's FluxGuidance value when
    it has one, else ``settings.guidance``. compile: torch.compile the engine's blocks (the first
    step compiles; worth it for long runs on a GPU); batch_branches=False runs every branch on its
    own (the per-branch reference of the batched engine). With ``kv_cache`` the cached keys and
    values (compute dtype) are freed when this call returns.
    Returns (rgb [B, H, W, 3], point_map [B, H, W, 3]), float in [0, 1].
    """
    check_settings(settings)
    if rgb_views.shape != point_views.shape or rgb_views.ndim != 4 or rgb_views.shape[-1] != 3:
        raise InputError("views", f"RGB views {tuple(rgb_views.shape)} and point-map views "
                                  f"{tuple(point_views.shape)} must both be [V, H, W, 3] and equal in size.")
    n_views, cond_h, cond_w = rgb_views.shape[0], rgb_views.shape[1], rgb_views.shape[2]
    if n_views < 1:
        raise InputError("views", "no condition views: render at least one view of the mesh.")
    if cond_h % 16 or cond_w % 16:
        raise InputError("rgb_views", f"the condition views are {cond_w}x{cond_h}; RefAny3D needs both sides a "
                                      "multiple of 16. Render them at a multiple of 16 (Render Views' width and "
                                      "height), or connect the mesh and set condition_size.")
    s, B = settings, settings.batch
    rt = as_runtime(model, offload)
    L = rt.layers_for(weights.side)
    weights.check_fits(L)
    device, dtype = rt.device, L.dtype
    gen = torch.Generator(device="cpu").manual_seed(s.seed)
    text = encode_prompt(rt, prompt, B, s.max_sequence_length)
    text.check_fits(L)
    prompt_embeds, pooled, text_ids = text.for_batch(B, device, dtype)
    g_value = text.guidance if text.guidance is not None else s.guidance
    latents, ids = initial_noise(B, L.in_channels // 4, s.height, s.width, dtype, device, gen)
    point_latents, _ = initial_noise(B, L.in_channels // 4, s.height, s.width, dtype, device, gen)   # own noise

    views = torch.cat([rgb_views, point_views]).float()
    black_tokens = None
    with rt.load_codec():
        cond_tokens, cond_ids = encode_images(rt.codec, views, gen, s.condition_latents)
        if s.image_cfg != 1.0:
            black_tokens, _ = encode_images(rt.codec, torch.zeros_like(views), gen, s.condition_latents)
    cond_tokens, cond_ids = cond_tokens.to(device, dtype), layout.condition_ids(cond_ids.to(device, dtype), cond_w)
    black_tokens = None if black_tokens is None else black_tokens.to(device, dtype)

    adapters = [weights.resolve(a) for a in layout.adapters(n_views)]
    mask = layout.group_mask(n_views, text_agnostic=s.text_agnostic, independent_conditions=s.kv_cache)
    unc_mask = mask if s.kv_cache else None          # the reference's black-condition pass has no mask
    conditions = list(range(3, 3 + 2 * n_views))
    caches = (KVCache(conditions), KVCache(conditions)) if s.kv_cache else (None, None)
    guidance = torch.full((B,), g_value, device=device) if L.has_guidance else None
    cond_guidance = torch.ones(B, device=device) if L.has_guidance else None

    def branches(t, rgb_latents, pts_latents, views) -> list[Branch]:
        return layout.build_branches(prompt_embeds, text_ids, t, guidance, rgb_latents, pts_latents, ids,
                                     views[None].expand(B, -1, -1, -1), cond_ids, cond_guidance, adapters)

    lengths = [prompt_embeds.shape[1], latents.shape[1], latents.shape[1]] + [cond_tokens.shape[1]] * 2 * n_views
    timesteps, schedulers = flux_timesteps(rt.scheduler_config, s.steps, latents.shape[1], device, count=2)
    memory = step_memory_bytes(L, lengths, B, cached_tokens=2 * n_views * cond_tokens.shape[1],
                               caches=sum(c is not None for c in caches))
    with rt.load(memory, weights.domain_embedder), _released(caches):
        engine = FluxEngine(L, weights.domain_embedder, compile=compile, batch_branches=batch_branches)
        for i, t in enumerate(timesteps):
            t_b = t.expand(B).to(dtype) / 1000
            out = engine(branches(t_b, latents, point_latents, cond_tokens), mask, pooled, outputs=[1, 2],
                         kv_cache=caches[0])
            v_rgb, v_pts = out[1], out[2]
            if black_tokens is not None:
                unc = engine(branches(t_b, latents, point_latents, black_tokens), unc_mask, pooled, outputs=[1, 2],
                             kv_cache=caches[1])
                v_rgb = unc[1] + s.image_cfg * (v_rgb - unc[1])
                v_pts = unc[2] + s.image_cfg * (v_pts - unc[2])
            latents = schedulers[0].step(v_rgb, t, latents, return_dict=False)[0]
            point_latents = schedulers[1].step(v_pts, t, point_latents, return_dict=False)[0]
            if progress is not None:
                progress(i + 1, len(timesteps))
    with rt.load_codec():
        return (decode_latents(rt.codec, latents, s.height, s.width),
                decode_latents(rt.codec, point_latents, s.height, s.width))
