"""Realiz3D sampling (SPEC.md section 3): a Flux target generated under spatially aligned
geometry controls (condition branches at offset 0, t = 0, with a control LoRA), while domain
shifters follow a domain schedule over (block, step)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..adapters import DomainSchedule, DomainShifters
from ..engine import Branch, FluxEngine
from ..loading.offload import Offload, no_offload
from ..renderers.errors import InputError
from .flow import decode_latents, encode_images, flux_timesteps


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
def sample_realiz3d(pipe, prompt: str, controls: Optional[torch.Tensor], settings: Realiz3DSettings,
                    control_adapters: tuple[str, ...] = (), shifters: Optional[DomainShifters] = None,
                    schedule: Optional[DomainSchedule] = None,
                    progress: Optional[Callable[[int, int], None]] = None,
                    offload: Optional[Offload] = None, target_adapters: tuple[str, ...] = ()) -> torch.Tensor:
    """Images [B, H, W, 3] in [0, 1].

    controls: [C, H, W, 3] geometry maps in [0, 1] aligned with the target (normal, point map,
    depth), one condition branch each, or None; control_adapters: the control LoRA's adapter
    names (see engine.lora_files.attach_lora). Without shifters the schedule must be None.
    target_adapters: adapters of the target branch (stage 2's target LoRA, see training/README.md).
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
    if controls is not None and tuple(controls.shape[1:3]) != (s.height, s.width):
        raise InputError("controls", f"control maps are {controls.shape[2]}x{controls.shape[1]} but the image "
                                     f"is {s.width}x{s.height}; controls must be spatially aligned (same size).")
    B = s.batch
    device = offload.device if offload is not None else pipe.transformer.device
    use = offload.use if offload is not None else no_offload
    dtype = pipe.transformer.x_embedder.weight.dtype
    gen = torch.Generator(device="cpu").manual_seed(s.seed)
    with use(pipe.text_encoder, pipe.text_encoder_2):
        prompt_embeds, pooled, text_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device,
                                                             num_images_per_prompt=B,
                                                             max_sequence_length=s.max_sequence_length)
    channels = pipe.transformer.config.in_channels // 4
    latents, ids = pipe.prepare_latents(B, channels, s.height, s.width, dtype, device, gen)
    cond_tokens = None
    if controls is not None:
        with use(pipe.vae):
            cond_tokens, cond_ids = encode_images(pipe, controls.float(), gen, s.condition_latents)
    has_g = bool(pipe.transformer.config.guidance_embeds)
    guidance = torch.full((B,), s.guidance, device=device) if has_g else None
    n_blocks = len(pipe.transformer.transformer_blocks) + len(pipe.transformer.single_transformer_blocks)
    timesteps, (scheduler,) = flux_timesteps(pipe, s.steps, latents.shape[1], device)

    def block_domains(step: int):
        if shifters is None:
            return None
        names = (schedule or DomainSchedule("real")).domains(step, len(timesteps), n_blocks)
        return [shifters.domain_index(n) for n in names]

    with use(pipe.transformer, shifters):
        engine = FluxEngine(pipe.transformer, shifters=shifters)    # on the device: its shift table too
        for i, t in enumerate(timesteps):
            t_b = t.expand(B).to(dtype) / 1000
            branches = [Branch(prompt_embeds, text_ids, t_b, guidance, is_text=True, name="text"),
                        Branch(latents, ids, t_b, guidance, tuple(target_adapters), block_domains=block_domains(i),
                               name="target")]
            if cond_tokens is not None:       # aligned controls: same position ids as the target (offset 0)
                zero, one = torch.zeros(B, device=device), (torch.ones(B, device=device) if has_g else None)
                branches += [Branch(cond_tokens[k:k + 1].expand(B, -1, -1), cond_ids, zero, one,
                                    tuple(control_adapters), name=f"control{k}") for k in range(len(cond_tokens))]
            v = engine(branches, None, pooled, outputs=[1])[1]
            latents = scheduler.step(v, t, latents, return_dict=False)[0]
            if progress is not None:
                progress(i + 1, len(timesteps))
    with use(pipe.vae):
        return decode_latents(pipe, latents, s.height, s.width)
