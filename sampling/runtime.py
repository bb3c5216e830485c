"""What the pack's samplers need of a model, whichever loaded it.

A :class:`FluxRuntime` bundles the transformer's layers (engine.layers: diffusers' layout or
the host's BFL module), a :class:`LatentCodec` (the VAE) and the scheduler config, with two
hooks that put the weights on the device for the time they run: for the pack's own pipeline
the offload helper, for a host's model its memory manager (given the bytes a step needs, so it
can evict other models first). Text arrives already encoded, as a :class:`TextConditioning`
(ComfyUI's CONDITIONING for Flux: T5 states and pooled CLIP, with FluxGuidance's value).
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..engine.layers import FluxLayers, flux_layers
from ..loading import configs
from ..renderers.errors import InputError


@dataclass
class TextConditioning:
    """embeds: T5 hidden states [1 or B, N, C]; pooled: CLIP pooled output [1 or B, P];
    guidance: the Flux guidance value carried with the conditioning (FluxGuidance), if any."""
    embeds: torch.Tensor
    pooled: torch.Tensor
    guidance: Optional[float] = None

    def check_fits(self, layers: FluxLayers) -> None:
        """The text widths must be the model's: a conditioning from another model's CLIP fails here."""
        if self.embeds.ndim != 3 or self.pooled.ndim != 2:
            raise InputError("positive", f"expected T5 states [1, N, C] and pooled CLIP [1, P]; got "
                                         f"{tuple(self.embeds.shape)} and {tuple(self.pooled.shape)}.")
        if (self.embeds.shape[-1], self.pooled.shape[-1]) != (layers.text_dim, layers.pooled_dim):
            raise InputError("positive", f"the conditioning has text states of width {self.embeds.shape[-1]} and a "
                                         f"pooled vector of {self.pooled.shape[-1]}; this Flux model takes "
                                         f"{layers.text_dim} and {layers.pooled_dim}. Encode the prompt with Flux's "
                                         "text encoders (DualCLIPLoader, type flux: clip_l + t5xxl).")

    def for_batch(self, batch: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embeds [B, N, C], pooled [B, P], text position ids [N, 3] of zeros)."""
        def rows(t):
            if t.shape[0] not in (1, batch):
                raise InputError("positive", f"the conditioning holds {t.shape[0]} prompts for a batch of {batch}; "
                                             "encode one prompt.")
            return t.to(device, dtype).expand(batch, *t.shape[1:])
        return rows(self.embeds), rows(self.pooled), torch.zeros(self.embeds.shape[1], 3, device=device, dtype=dtype)


class LatentCodec(ABC):
    """images [V, H, W, 3] in [0, 1] <-> latents [V, 16, H/8, W/8] in the model's space (the
    VAE's latents shifted and scaled as the transformer was trained on)."""
    channels: int = 16
    #: whether :meth:`encode` can draw from the posterior (mode 'sample'), not only its mean
    can_sample: bool = False

    @abstractmethod
    def encode(self, images: torch.Tensor, generator: torch.Generator, mode: str) -> torch.Tensor:
        """images [V, H, W, 3] in [0, 1] -> latents [V, C, H/8, W/8]; mode 'mean' or 'sample'."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """-> images [B, H, W, 3] float32 in [0, 1] on the CPU."""


class DiffusersCodec(LatentCodec):
    """A diffusers ``AutoencoderKL`` (the pack's own pipeline)."""
    can_sample = True

    def __init__(self, vae):
        self.vae = vae
        self.channels = vae.config.latent_channels

    def encode(self, images, generator, mode):
        x = images.permute(0, 3, 1, 2).to(self.vae.device, self.vae.dtype) * 2.0 - 1.0
        dist = self.vae.encode(x).latent_dist
        lat = dist.sample(generator) if mode == "sample" else dist.mean
        return (lat - self.vae.config.shift_factor) * self.vae.config.scaling_factor

    def decode(self, latents):
        lat = latents / self.vae.config.scaling_factor + self.vae.config.shift_factor
        img = self.vae.decode(lat.to(self.vae.device, self.vae.dtype), return_dict=False)[0]
        return (img / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu()


class HostCodec(LatentCodec):
    """A host's VAE given as two functions on raw VAE latents (ComfyUI's ``VAE.encode`` and
    ``VAE.decode``: images [V, H, W, 3] in [0, 1] <-> latents [V, C, h, w]) plus the latent
    format's shift and scale. The host's encoder returns the posterior's mode only."""

    def __init__(self, encode: Callable, decode: Callable, shift: float, scale: float, channels: int = 16):
        self._encode, self._decode = encode, decode
        self.shift, self.scale, self.channels = shift, scale, channels

    def encode(self, images, generator, mode):
        if mode == "sample":
            raise InputError("condition_latents", "this VAE gives the posterior mean only (ComfyUI's VAE encodes "
                                                  "deterministically); choose 'mean'.")
        return (self._encode(images.float()).float() - self.shift) * self.scale

    def decode(self, latents):
        return self._decode(latents.float() / self.scale + self.shift).float().cpu()[..., :3].clamp(0, 1)


@contextlib.contextmanager
def _on_device(device, modules):
    for m in modules:
        if m is not None:
            m.to(device)
    yield


@dataclass
class FluxRuntime:
    """layers: the transformer; codec: the VAE; scheduler_config: FlowMatch Euler settings
    (base/max shift, sequence lengths); device: where activations live.
    load(memory_bytes, *modules): context during which the transformer (and the small extra
    modules: domain embedder, shifters) are on ``device``; load_codec(): the same for the VAE.
    make_layers(side): the layers with per-branch side LoRAs (host models), see engine.side_lora."""
    layers: FluxLayers
    codec: LatentCodec
    scheduler_config: dict
    device: torch.device
    load: Callable = None
    load_codec: Callable = None
    make_layers: Optional[Callable] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.load is None:
            self.load = lambda memory, *modules: _on_device(self.device, modules)
        if self.load_codec is None:
            self.load_codec = contextlib.nullcontext

    def layers_for(self, side) -> FluxLayers:
        """The layers with ``side`` LoRAs (None: as they are)."""
        if side is None:
            return self.layers
        if self.make_layers is None:
            raise InputError("model", "these LoRAs were attached for a model loaded by ComfyUI's loaders, but the "
                                      "sampler got the pack's own model; load both from the same model.")
        return self.make_layers(side)


def host_runtime(module, dtype, device, codec: LatentCodec, load: Optional[Callable] = None) -> FluxRuntime:
    """A runtime over a host's BFL-layout Flux module (ComfyUI's ``diffusion_model``), computing
    in ``dtype`` on ``device``; ``load(memory_bytes, *modules)`` is the host's memory manager."""
    from ..engine.bfl_layers import BFLFluxLayers
    layers = BFLFluxLayers(module, dtype, device)

    def make_layers(side):
        return BFLFluxLayers(module, dtype, device, side.to(device, dtype))

    return FluxRuntime(layers=layers, codec=codec, scheduler_config=default_scheduler_config(layers.has_guidance),
                       device=torch.device(device), load=load, make_layers=make_layers)


def default_scheduler_config(guidance: bool) -> dict:
    """FLUX.1-dev's (or schnell's, without guidance) scheduler config, shipped with the pack."""
    return dict(configs.load("flux1-dev_scheduler" if guidance else "flux1-schnell_scheduler"))


def runtime_from_pipeline(pipe, offload=None) -> FluxRuntime:
    """The pack's own diffusers pipeline as a runtime (``offload``: loading.Offload or None)."""
    device = offload.device if offload is not None else pipe.transformer.device
    if offload is not None:
        load = lambda memory, *modules: offload.use(pipe.transformer, *[m for m in modules if m is not None])  # noqa: E731
        load_codec = lambda: offload.use(pipe.vae)  # noqa: E731
    else:
        load = load_codec = None
    return FluxRuntime(layers=flux_layers(pipe.transformer), codec=DiffusersCodec(pipe.vae),
                       scheduler_config=dict(pipe.scheduler.config), device=torch.device(device), load=load,
                       load_codec=load_codec, extra={"pipeline": pipe, "offload": offload})


def as_runtime(model, offload=None) -> FluxRuntime:
    """A FluxRuntime as is, or one over a diffusers FluxPipeline."""
    if isinstance(model, FluxRuntime):
        return model
    if hasattr(model, "transformer") and hasattr(model, "vae"):
        return runtime_from_pipeline(model, offload)
    raise TypeError(f"expected a FluxRuntime or a FluxPipeline, got {type(model).__name__}")


def encode_prompt(runtime: FluxRuntime, prompt, batch: int, max_sequence_length: int) -> TextConditioning:
    """A TextConditioning as is; a prompt string through the pack's own pipeline's encoders."""
    if isinstance(prompt, TextConditioning):
        return prompt
    pipe = runtime.extra.get("pipeline")
    if pipe is None:
        raise InputError("positive", "give the prompt as CONDITIONING (CLIP Text Encode) for this model.")
    offload = runtime.extra.get("offload")
    ctx = offload.use(pipe.text_encoder, pipe.text_encoder_2) if offload is not None else contextlib.nullcontext()
    with ctx:
        embeds, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=runtime.device,
                                               num_images_per_prompt=1, max_sequence_length=max_sequence_length)
    return TextConditioning(embeds, pooled)


#: device bytes of one forward's activations per token and hidden unit, in units of the compute
#: dtype's size: every branch's hidden state kept across blocks plus one block's transients (q, k,
#: v, a single block's fused linear1 output, the attention output, the keys and values a query
#: group gathers) with a fused attention kernel. benchmarks/memory.py measured 12.4 (RefAny3D, 8
#: views) to 17.4 (one 4096-token target) at FLUX.1-dev width; 20 leaves a margin above both.
ACTIVATION_UNITS = 20


def step_memory_bytes(layers: FluxLayers, lengths: list[int], batch: int = 1, cached_tokens: int = 0,
                      caches: int = 0) -> int:
    """Device bytes one denoising step needs beyond the weights, handed to the host's memory
    manager (which frees or partially loads models to leave that much): activations for branch
    token counts ``lengths``, plus ``caches`` condition KV caches of ``cached_tokens`` tokens
    (keys and values of every block)."""
    size = max(torch.finfo(layers.dtype).bits // 8, 2) if layers.dtype.is_floating_point else 2
    width = layers.hidden
    active = sum(lengths) * batch * width * size * ACTIVATION_UNITS
    kv = caches * layers.num_blocks * 2 * cached_tokens * batch * width * size
    return int(active + kv)
