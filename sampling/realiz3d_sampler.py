"""Realiz3D sampling (SPEC.md section 3): a Flux target generated under spatially aligned
geometry controls (condition branches at offset 0, t = 0, with a control LoRA), while domain
shifters follow a domain schedule over (block, step)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..adapters import DomainSchedule, DomainShifters
from ..engine import FluxEngine
from ..loading.offload import Offload
from ..renderers.errors import InputError
from ..renderers.images import CONTROL_BACKGROUND, composite_over
from .realiz3d_layout import build_branches
from .flow import decode_latents, encode_images, flux_timesteps, initial_noise
from .runtime import as_runtime, encode_prompt, step_memory_bytes


@dataclass
class Realiz3DSettings:
    """steps, guidance (Flux guidance embedding), width/height (multiples of 16, the controls'
    size), batch, seed, condition_latents ('mean': deterministic control latents, or 'sample')."""

    steps: int = 28
    guidance: float = 3.5
    width: int = 512
    height: int = 512
    batch: int = 1
    seed: int = 0
    condition_latents: str = "mean"
    max_sequence_length: int = 512


@torch.no_grad()
def sample_realiz3d(model, prompt, controls: Optional[torch.Tensor], settings: Realiz3DSettings,
                    control_adapters: tuple[str, ...] = (), shifters: Optional[DomainShifters] = None,
                    schedule: Optional[DomainSchedule] = None,
                    progress: Optional[Callable[[int, int], None]] = None,
                    offload: Optional[Offload] = None, target_adapters: tuple[str, ...] = (),
                    side=None, compile: bool = False, batch_branches: bool = True) -> torch.Tensor:
    """Images [B, H, W, 3] in [0, 1].

    model: a sampling.runtime.FluxRuntime or a diffusers FluxPipeline; prompt: a
    TextConditioning (its FluxGuidance value, when set, wins over ``settings.guidance``) or a
    string for the pack's own pipeline.
    controls: [C, H, W, 3] geometry maps in [0, 1] aligned with the target (normal, point map,
    depth), one condition branch each, or None; control_adapters: the control LoRA's adapter
    names (engine.lora_files.attach_lora on the pack's model; names in ``side``, an
    engine.side_lora.SideLoRAs, on a host's model). Without shifters the schedule must be None.
    target_adapters: adapters of the target branch (stage 2's target LoRA, see training/README.md).
    compile: torch.compile the engine's blocks; batch_branches=False: the per-branch reference.
    """
    s = settings
    for name in ("width", "height"):
        v = getattr(s, name)
        if v < 16 or v % 16:
            raise InputError(name, f"must be a positive multiple of 16 (got {v}).")
    if s.steps < 1:
        raise InputError("steps", f"must be at least 1 (got {s.steps}).")
    if schedule is not None and shifters is None:
        raise InputError("schedule", "a domain schedule needs domain shifters; connect Load Domain Shifter.")
    if controls is not None:
        if controls.ndim != 4 or controls.shape[-1] not in (3, 4):
            raise InputError("controls", f"control maps must be images [C, H, W, 3] (or RGBA), got shape "
                                         f"{tuple(controls.shape)}.")
        controls = composite_over(controls.float(), CONTROL_BACKGROUND)   # transparency: the black background
    if controls is not None and tuple(controls.shape[1:3]) != (s.height, s.width):
        raise InputError("controls", f"control maps are {controls.shape[2]}x{controls.shape[1]} but the image "
                                     f"is {s.width}x{s.height}; controls must be spatially aligned (same size).")
    B = s.batch
    rt = as_runtime(model, offload)
    L = rt.layers_for(side)
    if shifters is not None:
        shifters.check_fits(L)
    device, dtype = rt.device, L.dtype
    gen = torch.Generator(device="cpu").manual_seed(s.seed)
    text = encode_prompt(rt, prompt, B, s.max_sequence_length)
    text.check_fits(L)
    prompt_embeds, pooled, text_ids = text.for_batch(B, device, dtype)
    latents, ids = initial_noise(B, L.in_channels // 4, s.height, s.width, dtype, device, gen)
    cond_tokens = None
    if controls is not None:
        with rt.load_codec():
            cond_tokens, _ = encode_images(rt.codec, controls.float(), gen, s.condition_latents)
        cond_tokens = cond_tokens.to(device, dtype)         # aligned: the target's own ids
    has_g = L.has_guidance
    g_value = text.guidance if text.guidance is not None else s.guidance
    guidance = torch.full((B,), g_value, device=device) if has_g else None
    control_guidance = torch.ones(B, device=device) if has_g else None
    controls_b = None if cond_tokens is None else cond_tokens[None].expand(B, -1, -1, -1)   # [B, C, T, 64]
    timesteps, (scheduler,) = flux_timesteps(rt.scheduler_config, s.steps, latents.shape[1], device)

    def block_domains(step: int):
        if shifters is None:
            return None
        names = (schedule or DomainSchedule("real")).domains(step, len(timesteps), L.num_blocks)
        return [shifters.domain_index(n) for n in names]

    lengths = [prompt_embeds.shape[1], latents.shape[1]] + ([] if cond_tokens is None else
                                                           [cond_tokens.shape[1]] * len(cond_tokens))
    with rt.load(step_memory_bytes(L, lengths, B), shifters):
        engine = FluxEngine(L, shifters=shifters, compile=compile,     # on the device: its shift table too
                            batch_branches=batch_branches)
        for i, t in enumerate(timesteps):
            t_b = t.expand(B).to(dtype) / 1000
            branches = build_branches(prompt_embeds, text_ids, t_b, guidance, latents, ids, target_adapters,
                                      block_domains(i), controls_b, control_adapters, control_guidance)
            v = engine(branches, None, pooled, outputs=[1])[1]
            latents = scheduler.step(v, t, latents, return_dict=False)[0]
            if progress is not None:
                progress(i + 1, len(timesteps))
    with rt.load_codec():
        return decode_latents(rt.codec, latents, s.height, s.width)
