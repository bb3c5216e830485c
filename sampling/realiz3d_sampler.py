"""Realiz3D sampling (SPEC.md section 3): a Flux target generated under spatially aligned
geometry controls (condition branches at offset 0, t = 0, with a control LoRA), while domain
shifters follow a domain schedule over (block, step)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..adapters import DomainSchedule, DomainShifters
from ..engine import FluxEngine
from ..loading.offload import Offload
from ..renderers.errors import InputError
from ..renderers.images import CONTROL_BACKGROUND, composite_over
from .realiz3d_layout import build_branches, control_mask
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


SAMPLE_IF_POSSIBLE = "sample if possible"


@dataclass
class ControlSet:
    """One control LoRA with its control images: one condition branch per image (t = 0,
    guidance 1.0, the target's position ids, ``adapters`` active).

    images: [C, H, W, 3] (or RGBA) in [0, 1], the output's size; latents: how the images become
    latents, 'mean' (deterministic), 'sample' (a posterior draw from the sampler's generator, as
    OminiControl encodes its conditions) or 'sample if possible' (a draw when the codec has a
    posterior, else its mean: ComfyUI's VAE encodes to the mean only);
    independent: the set's branches do not see each other (OminiControl's conditions); branches
    of different sets never do (see realiz3d_layout.control_mask)."""

    images: torch.Tensor
    adapters: tuple[str, ...] = ()
    latents: str = "mean"
    independent: bool = False
    name: str = "control"


@torch.no_grad()
def sample_realiz3d(model, prompt, controls: Optional[torch.Tensor], settings: Realiz3DSettings,
                    control_adapters: tuple[str, ...] = (), shifters: Optional[DomainShifters] = None,
                    schedule: Optional[DomainSchedule] = None,
                    progress: Optional[Callable[[int, int], None]] = None,
                    offload: Optional[Offload] = None, target_adapters: tuple[str, ...] = (),
                    side=None, compile: bool = False, batch_branches: bool = True,
                    control_sets: Optional[Sequence[ControlSet]] = None) -> torch.Tensor:
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
    control_sets: instead of ``controls`` / ``control_adapters`` (which are one set, latents as
    ``settings.condition_latents``), several :class:`ControlSet` (e.g. OminiControl's depth and
    canny LoRAs, each on its own images), encoded in order after the noise is drawn.
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
        if control_sets:
            raise InputError("controls", "give control images or control sets, not both.")
        control_sets = [ControlSet(controls, tuple(control_adapters), s.condition_latents)]
    sets = [_checked(c, s) for c in (control_sets or ())]
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
    cond_tokens = []                                        # per set [C, T, 64]: aligned, the target's own ids
    if sets:
        with rt.load_codec():
            for c in sets:
                mode = "mean" if c.latents == "mean" or (c.latents == SAMPLE_IF_POSSIBLE and not rt.codec.can_sample) \
                    else "sample"
                tokens, _ = encode_images(rt.codec, c.images, gen, mode)
                cond_tokens.append(tokens.to(device, dtype))
    has_g = L.has_guidance
    g_value = text.guidance if text.guidance is not None else s.guidance
    guidance = torch.full((B,), g_value, device=device) if has_g else None
    control_guidance = torch.ones(B, device=device) if has_g else None
    control_b = [(tok[None].expand(B, -1, -1, -1), c.adapters) for tok, c in zip(cond_tokens, sets)]  # [B, C, T, 64]
    mask = control_mask([len(c.images) for c in sets], [c.independent for c in sets])
    timesteps, (scheduler,) = flux_timesteps(rt.scheduler_config, s.steps, latents.shape[1], device)

    def block_domains(step: int):
        if shifters is None:
            return None
        names = (schedule or DomainSchedule("real")).domains(step, len(timesteps), L.num_blocks)
        return [shifters.domain_index(n) for n in names]

    lengths = [prompt_embeds.shape[1], latents.shape[1]] + [tok.shape[1] for tok in cond_tokens for _ in tok]
    with rt.load(step_memory_bytes(L, lengths, B), shifters):
        engine = FluxEngine(L, shifters=shifters, compile=compile,     # on the device: its shift table too
                            batch_branches=batch_branches)
        for i, t in enumerate(timesteps):
            t_b = t.expand(B).to(dtype) / 1000
            branches = build_branches(prompt_embeds, text_ids, t_b, guidance, latents, ids, target_adapters,
                                      block_domains(i), control_guidance=control_guidance, control_sets=control_b)
            v = engine(branches, mask, pooled, outputs=[1])[1]
            latents = scheduler.step(v, t, latents, return_dict=False)[0]
            if progress is not None:
                progress(i + 1, len(timesteps))
    with rt.load_codec():
        return decode_latents(rt.codec, latents, s.height, s.width)


def _checked(c: ControlSet, s: Realiz3DSettings) -> ControlSet:
    """The set with its images as float RGB over the black background, checked against the output size."""
    images = c.images
    if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise InputError("controls", f"control maps must be images [C, H, W, 3] (or RGBA), got shape "
                                     f"{tuple(images.shape)}.")
    if c.latents not in ("mean", "sample", SAMPLE_IF_POSSIBLE):
        raise InputError("condition_latents", f"must be 'mean', 'sample' or '{SAMPLE_IF_POSSIBLE}' (got {c.latents!r}).")
    images = composite_over(images.float(), CONTROL_BACKGROUND)   # transparency: the black background
    if tuple(images.shape[1:3]) != (s.height, s.width):
        raise InputError("controls", f"control maps are {images.shape[2]}x{images.shape[1]} but the image "
                                     f"is {s.width}x{s.height}; controls must be spatially aligned (same size).")
    return ControlSet(images, tuple(c.adapters), c.latents, c.independent, c.name)
