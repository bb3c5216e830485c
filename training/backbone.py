"""What a training recipe needs of a Flux model, whichever loaded it.

A :class:`Backbone` gives the engine its layers, encodes captions and images, and holds the
trainable LoRAs. Two kinds:

- :class:`DiffusersBackbone`: a diffusers ``FluxPipeline`` (the command line, Load Flux Model):
  peft adapters injected into the transformer and removed afterwards; full fine-tuning trains
  the transformer's own weights.
- :class:`HostBackbone`: a host's BFL-layout Flux module (ComfyUI's MODEL, fp8 or bf16 weights)
  with encoders given as functions. The module is never modified: trainable LoRAs live beside
  it (engine.side_lora, as the samplers apply LoRAs to a MODEL), shifters and the domain
  embedder are the engine's own modules, and its weights' ``requires_grad`` flags are restored
  at the end. Full fine-tuning is refused (it would change a model other nodes share).

Latent and text shapes: captions -> (T5 states [L, C], pooled [P]) on the CPU; images
[N, H, W, 3] in [0, 1] -> posterior (mean, std) packed [N, T, 64] in the transformer's latent
space (shift and scale applied), float32 on the CPU, and the latent grid (h, w).
"""
from __future__ import annotations

import contextlib
import math
import re
from abc import ABC, abstractmethod
from typing import Callable, Optional

import torch
from torch import nn

from ..engine.layers import FluxLayers, flux_layers
from ..renderers.errors import InputError
from ..sampling.flow import latent_ids, pack_latents   # the samplers' packing: one definition


class Backbone(ABC):
    """layers: what FluxEngine runs; device: where activations live; dtype: compute dtype."""

    layers: FluxLayers
    device: torch.device
    can_full_finetune = False
    #: names of the text encoders' and the VAE's weights (training.encode.fingerprint), part of the
    #: disk cache's keys
    text_id: str = ""
    vae_id: str = ""

    @property
    def dtype(self) -> torch.dtype:
        return self.layers.dtype

    def layout(self) -> dict:
        L = self.layers
        return {"num_double": L.num_double, "num_single": L.num_single, "hidden": L.hidden}

    @abstractmethod
    def base_module(self) -> nn.Module:
        """The module holding the frozen base weights."""

    def weight_bytes(self) -> float:
        """Bytes per base weight as stored (1 for fp8)."""
        try:
            return self.base_module().get_submodule(self._probe).weight.element_size()
        except AttributeError:                    # no double block: any weight
            return next(self.base_module().parameters()).element_size()

    def resident_bytes(self, device) -> int:
        """Bytes of base weights already on ``device``."""
        dev = torch.device(device)
        return sum(p.numel() * p.element_size() for p in self.base_module().parameters()
                   if p.device.type == dev.type and (dev.index is None or p.device.index == dev.index))

    @abstractmethod
    def encode_text(self, caption: str, max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    @abstractmethod
    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple]: ...

    def ids(self, h: int, w: int, dtype) -> torch.Tensor:
        return latent_ids(h, w, self.device, dtype)

    @abstractmethod
    def add_lora(self, name: str, rank: int, alpha: float, targets, init) -> dict: ...

    @abstractmethod
    def load_lora(self, name: str, path: str, input_name: str) -> None: ...

    @abstractmethod
    def save_lora(self, name: str, path: str) -> str: ...

    def full_parameters(self) -> dict:
        raise InputError("stage2.full_finetune", "full fine-tuning changes the model's own weights, which this model "
                                                 "shares with other nodes; train LoRAs (full_finetune off), or use "
                                                 "the command line on a diffusers folder.")

    def save_full(self, path: str) -> str:
        return self.full_parameters()

    def freeze(self) -> None:
        """Base weights frozen for the run (flags remembered for :meth:`restore`)."""

    def restore(self) -> None:
        """The model as it came: training adapters removed, grad flags restored."""

    def release_encoders(self) -> None:
        """Free the text encoders and the VAE (everything is cached before the first step)."""


class DiffusersBackbone(Backbone):
    can_full_finetune = True
    _probe = "transformer_blocks.0.attn.to_q"

    def base_module(self):
        return self.transformer

    def __init__(self, pipe, device=None):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.layers = flux_layers(self.transformer)
        self.device = torch.device(device) if device is not None else self.transformer.device
        self._flags: Optional[list] = None
        self._loras: list[str] = []
        from .encode import fingerprint
        self.text_id = fingerprint(getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None))
        self.vae_id = fingerprint(getattr(pipe, "vae", None))

    @torch.no_grad()
    def encode_text(self, caption, max_sequence_length):
        embeds, pooled, _ = self.pipe.encode_prompt(prompt=caption, prompt_2=None, device=self.device,
                                                    num_images_per_prompt=1, max_sequence_length=max_sequence_length)
        return embeds[0].cpu(), pooled[0].cpu()

    @torch.no_grad()
    def encode_images(self, images):
        vae = self.pipe.vae
        x = images.permute(0, 3, 1, 2).to(self.device, vae.dtype) * 2.0 - 1.0
        dist = vae.encode(x).latent_dist
        scale, shift = vae.config.scaling_factor, vae.config.shift_factor
        mean, std = (dist.mean - shift) * scale, dist.std * scale
        return pack_latents(mean).float().cpu(), pack_latents(std).float().cpu(), tuple(mean.shape[2:])

    def add_lora(self, name, rank, alpha, targets, init):
        from .lora import add_lora
        params = add_lora(self.transformer, name, rank, alpha, targets, init=init)
        self._loras.append(name)
        return params

    def load_lora(self, name, path, input_name):
        from .lora import load_into_lora
        load_into_lora(self.transformer, name, path, input_name)

    def save_lora(self, name, path):
        from .lora import save_lora
        return save_lora(self.transformer, name, path)

    def full_parameters(self):
        self.transformer.requires_grad_(True)
        return {n: p for n, p in self.transformer.named_parameters() if ".lora_" not in n}

    def save_full(self, path):
        from .outputs import save_transformer
        return save_transformer(self.transformer, path)

    def freeze(self):
        self._flags = [p.requires_grad for p in self.transformer.parameters()]
        self.transformer.requires_grad_(False)

    def restore(self):
        from .lora import remove_lora
        remove_lora(self.transformer, self._loras)
        self._loras = []
        if self._flags is not None:
            for p, flag in zip(self.transformer.parameters(), self._flags):
                p.requires_grad_(flag)


#: every linear of diffusers' Flux block layout a LoRA may target, per block kind
_DOUBLE_LINEARS = ("norm1.linear", "norm1_context.linear", "attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj",
                   "attn.add_k_proj", "attn.add_v_proj", "attn.to_out.0", "attn.to_add_out", "ff.net.0.proj",
                   "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
_SINGLE_LINEARS = ("norm.linear", "attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out")
_TOP_LINEARS = ("x_embedder", "context_embedder", "norm_out.linear", "proj_out")


def diffusers_linear_names(num_double: int, num_single: int) -> list[str]:
    return ([*_TOP_LINEARS] + [f"transformer_blocks.{i}.{n}" for i in range(num_double) for n in _DOUBLE_LINEARS]
            + [f"single_transformer_blocks.{i}.{n}" for i in range(num_single) for n in _SINGLE_LINEARS])


class HostBackbone(Backbone):
    """A host's BFL Flux module with trainable side LoRAs.

    module: the BFL-layout Flux (ComfyUI's ``model.diffusion_model``); dtype: the compute dtype
    (the manual-cast dtype for fp8 weights); device: where activations live.
    encode_text(caption) -> (T5 states [L, C], pooled [P]); encode_images(images [N, H, W, 3])
    -> raw VAE latents [N, 16, h, w] (the posterior mean: a host's VAE encodes
    deterministically), shifted and scaled here with ``shift``/``scale``.
    load(): context in which the module's weights are usable on ``device`` (the host's memory
    manager); release(): called once every sample is encoded, before the first step."""

    _probe = "double_blocks.0.img_attn.qkv"

    def base_module(self):
        return self.module

    def __init__(self, module, dtype, device, encode_text: Callable, encode_images: Callable, shift: float,
                 scale: float, load: Optional[Callable] = None, release: Optional[Callable] = None,
                 text_id: str = "", vae_id: str = ""):
        from ..engine.bfl_layers import BFLFluxLayers
        from ..engine.side_lora import SideLoRAs

        self.module, self.device = module, torch.device(device)
        self.side = SideLoRAs()
        try:
            self.layers = BFLFluxLayers(module, dtype, device, self.side)
        except ValueError as exc:
            raise InputError("model", f"{exc}.") from None
        self._text, self._images, self.shift, self.scale = encode_text, encode_images, shift, scale
        self._load, self._release = load, release
        self.text_id, self.vae_id = text_id, vae_id
        self._loras: dict[str, dict] = {}          # name -> {diffusers module: (A, B, scale)}
        self._flags: Optional[list] = None

    def encode_text(self, caption, max_sequence_length):
        with torch.no_grad():
            embeds, pooled = self._text(caption)
        embeds = embeds.reshape(-1, embeds.shape[-1])[:max_sequence_length]
        return embeds.float().cpu(), pooled.reshape(-1).float().cpu()

    def encode_images(self, images):
        with torch.no_grad():
            lat = (self._images(images.float()).float() - self.shift) * self.scale
        mean = pack_latents(lat).cpu()
        return mean, torch.zeros_like(mean), tuple(lat.shape[2:])

    def _rows(self, name: str, module, index: int) -> int:
        if name.endswith("proj_mlp"):
            return module.out_features - 3 * self.layers.hidden
        if index or name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            return self.layers.hidden
        return module.out_features

    def add_lora(self, name, rank, alpha, targets, init):
        from ..loading.bfl_keys import bfl_lora_target
        from ..refany3d.lora_targets import is_target

        L, state, params = self.layers, {}, {}
        for module_name in diffusers_linear_names(L.num_double, L.num_single):
            if not is_target(module_name, targets):
                continue
            target = bfl_lora_target(module_name)
            module = L.module_of(target[0]) if target else None
            if module is None:
                continue
            down = torch.empty(rank, module.in_features, device=self.device)
            if init == "gaussian":
                nn.init.normal_(down, std=1.0 / rank)
            else:
                nn.init.kaiming_uniform_(down, a=math.sqrt(5))
            down = nn.Parameter(down)
            up = nn.Parameter(torch.zeros(self._rows(module_name, module, target[1]), rank, device=self.device))
            state[f"transformer.{module_name}.lora_A.weight"] = down
            state[f"transformer.{module_name}.lora_B.weight"] = up
            params[f"{module_name}.lora_A.{name}.weight"] = down
            params[f"{module_name}.lora_B.{name}.weight"] = up
        if not params:
            raise ValueError(f"no module of the transformer matches the LoRA targets {targets}")
        self.side.add(name, state, L.module_of, L.hidden, "lora.targets", "(training)", alpha / rank)
        self._loras[name] = {"state": state, "scale": alpha / rank}
        return params

    def load_lora(self, name, path, input_name):
        from ..engine.lora_files import read_lora

        file = read_lora(path, input_name)
        mine = self._loras[name]
        with torch.no_grad():
            for key, p in mine["state"].items():
                if key not in file:
                    continue
                if file[key].shape != p.shape:
                    raise InputError(input_name, f"'{path}' has shape {tuple(file[key].shape)} at '{key}', this "
                                                 f"run {tuple(p.shape)}; set lora.rank to the file's rank.")
                value = file[key].float()
                if ".lora_B." in key:
                    module = re.sub(r"^transformer\.|\.lora_B\.weight$", "", key)
                    value = value * file.scale(module) / mine["scale"]
                p.copy_(value)
        extra = sorted({k.split(".lora_")[0] for k in file if ".lora_" in k and k not in mine["state"]})
        if extra:
            raise InputError(input_name, f"'{path}' adapts layers that lora.targets does not train (e.g. {extra[:3]}).")

    def save_lora(self, name, path):
        from .lora import lora_file_metadata
        from .outputs import save_safetensors

        mine = self._loras[name]
        out = {k: (v.detach().float() * (mine["scale"] if ".lora_B." in k else 1.0)).cpu()
               for k, v in mine["state"].items()}
        return save_safetensors(out, path, lora_file_metadata(name))

    def freeze(self):
        self._flags = [p.requires_grad for p in self.module.parameters()]
        self.module.requires_grad_(False)

    def restore(self):
        self.side.layers.clear()
        self.side.names.clear()
        self._loras = {}
        if self._flags is not None:
            for p, flag in zip(self.module.parameters(), self._flags):
                p.requires_grad_(flag)

    def loaded(self):
        return self._load() if self._load is not None else contextlib.nullcontext()

    def release_encoders(self):
        if self._release is not None:
            self._release()


def as_backbone(model, device=None) -> Backbone:
    """A Backbone as is, or one over a diffusers FluxPipeline."""
    if isinstance(model, Backbone):
        return model
    if hasattr(model, "transformer") and hasattr(model, "vae"):
        return DiffusersBackbone(model, device)
    raise TypeError(f"expected a training Backbone or a FluxPipeline, got {type(model).__name__}")
