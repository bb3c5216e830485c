""":class:`FluxLayers` over Black Forest Labs' Flux layout, as ComfyUI builds it
(``comfy/ldm/flux``: ``img_in``, ``time_in``, ``double_blocks[i].img_attn.qkv``,
``single_blocks[i].linear1``, ``final_layer``, ``pe_embedder``).

Only the module's own layers are called, never its forward: the engine needs every branch to
get its own modulation and adapters. So whatever the host's layer classes do on a call happens
for the pack exactly as for the host's sampler: fp8 or otherwise quantised weights cast to the
compute dtype per layer, weights of a partially loaded model streamed to the device. Nothing of
the module is modified; LoRAs come from :class:`engine.side_lora.SideLoRAs`, beside it.
This file imports nothing of the host: it duck-types the module's attributes.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .layers import FluxLayers
from .side_lora import SideLoRAs

FP8_DTYPES = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n))


def _submodule(model, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def sinusoidal_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Flux's timestep features: [B] values (sigma or guidance, x1000 inside) -> [B, dim] float32,
    cosines first then sines, as BFL's and diffusers' Flux both compute them."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class BFLFluxLayers(FluxLayers):
    """model: a BFL-layout Flux module (ComfyUI's ``model.diffusion_model``).
    dtype: the compute dtype (ComfyUI's ``manual_cast_dtype`` when the weights are stored in
    fp8, else their dtype); device: where activations live (the host's load device, which under
    partial loading differs from where some weights sit). side: per-branch LoRAs."""

    layout = "bfl"

    def __init__(self, model, dtype: Optional[torch.dtype] = None, device=None, side: Optional[SideLoRAs] = None):
        params = getattr(model, "params", None)
        if getattr(params, "global_modulation", False) or getattr(params, "mlp_silu_act", False) \
                or not hasattr(model, "final_layer"):
            raise ValueError("this Flux model has FLUX.2's layout (global modulation or a SiLU-gated MLP); the "
                             "pack's engine runs FLUX.1-family models")
        self.model = model
        self.num_double, self.num_single = len(model.double_blocks), len(model.single_blocks)
        self.heads, self.hidden = int(model.num_heads), int(model.hidden_size)
        self.has_guidance = bool(getattr(params, "guidance_embed", isinstance(model.guidance_in, torch.nn.Module)
                                         and hasattr(model.guidance_in, "in_layer")))
        self.in_channels = int(model.img_in.in_features)
        self.vec_in_dim = int(model.vector_in.in_layer.in_features)
        self.text_dim, self.pooled_dim = int(model.txt_in.in_features), self.vec_in_dim
        weight_dtype = model.img_in.weight.dtype
        if dtype is None and weight_dtype not in FP8_DTYPES:
            dtype = weight_dtype
        self._dtype = dtype             # None: fp8 storage and no compute dtype given (layout checks only)
        self._device = torch.device(device) if device is not None else model.img_in.weight.device
        self.side = side if side is not None else SideLoRAs()

    @property
    def dtype(self) -> torch.dtype:
        if self._dtype is None:
            raise ValueError("the weights are stored in fp8: give the compute dtype to run the model")
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def module_of(self, name: str):
        return _submodule(self.model, name)

    def _lin(self, name: str, module, x, adapters):
        return self.side.apply(name, module(x), x, adapters)

    def check_adapters(self, adapters: set) -> None:
        missing = set(adapters) - self.side.names
        if missing:
            raise ValueError(f"adapters {sorted(missing)} are not attached to this model")

    # -- inputs ------------------------------------------------------------------------------
    def embed(self, x, text, adapters):
        m, x = self.model, x.to(self.dtype)
        if text and getattr(m, "txt_norm", None) is not None:        # newer hosts' optional text RMSNorm
            x = m.txt_norm(x)
        return self._lin("txt_in" if text else "img_in", m.txt_in if text else m.img_in, x, adapters)

    def time_embedding(self, timestep, guidance, pooled):
        m, dt = self.model, self.dtype
        vec = m.time_in(sinusoidal_embedding(timestep).to(dt))
        if self.has_guidance:
            vec = vec + m.guidance_in(sinusoidal_embedding(guidance).to(dt))
        return vec + m.vector_in(pooled.to(dt)[:, :self.vec_in_dim])

    def rope(self, ids):
        pe = self.model.pe_embedder(ids[None].float())      # [1, 1, N, Dh/2, 2, 2]
        return pe[:, 0, :, None]                             # [1, N, 1, Dh/2, 2, 2]: tokens before heads

    def apply_rope(self, x, rope):
        x_ = x.to(rope.dtype).reshape(*x.shape[:-1], -1, 1, 2)
        out = rope[..., 0] * x_[..., 0] + rope[..., 1] * x_[..., 1]
        return out.reshape(*x.shape).type_as(x)

    # -- double blocks ---------------------------------------------------------------------------
    @staticmethod
    def _stream(text: bool) -> str:
        return "txt" if text else "img"

    def double_modulation(self, i, vec, text, adapters):
        s = self._stream(text)
        mod = getattr(self.model.double_blocks[i], f"{s}_mod")
        return self._lin(f"double_blocks.{i}.{s}_mod.lin", mod.lin, F.silu(vec), adapters).chunk(6, dim=-1)

    def double_norm(self, i, x, text, second):
        return getattr(self.model.double_blocks[i], f"{self._stream(text)}_norm{2 if second else 1}")(x)

    def double_qkv(self, i, h, text, adapters):
        s = self._stream(text)
        attn = getattr(self.model.double_blocks[i], f"{s}_attn")
        qkv = self._lin(f"double_blocks.{i}.{s}_attn.qkv", attn.qkv, h, adapters)
        q, k, v = qkv.view(*qkv.shape[:2], 3, self.heads, -1).unbind(2)
        q, k = attn.norm(q, k, v)
        return q, k, v

    def double_attn_out(self, i, o, text, adapters):
        s = self._stream(text)
        attn = getattr(self.model.double_blocks[i], f"{s}_attn")
        return self._lin(f"double_blocks.{i}.{s}_attn.proj", attn.proj, o, adapters)

    def double_mlp(self, i, h, text, adapters):
        s = self._stream(text)
        mlp = getattr(self.model.double_blocks[i], f"{s}_mlp")
        h = self._lin(f"double_blocks.{i}.{s}_mlp.0", mlp[0], h, adapters)
        return self._lin(f"double_blocks.{i}.{s}_mlp.2", mlp[2], mlp[1](h), adapters)

    # -- single blocks ---------------------------------------------------------------------------
    def single_modulation(self, i, vec, adapters):
        block = self.model.single_blocks[i]
        return self._lin(f"single_blocks.{i}.modulation.lin", block.modulation.lin, F.silu(vec), adapters).chunk(3, dim=-1)

    def single_norm(self, i, x):
        return self.model.single_blocks[i].pre_norm(x)

    def single_qkv_mlp(self, i, h, adapters):
        block = self.model.single_blocks[i]
        out = self._lin(f"single_blocks.{i}.linear1", block.linear1, h, adapters)
        qkv, mlp = out.split([3 * self.hidden, out.shape[-1] - 3 * self.hidden], dim=-1)
        q, k, v = qkv.view(*qkv.shape[:2], 3, self.heads, -1).unbind(2)
        q, k = block.norm(q, k, v)
        return q, k, v, block.mlp_act(mlp)

    def single_out(self, i, h, adapters):
        return self._lin(f"single_blocks.{i}.linear2", self.model.single_blocks[i].linear2, h, adapters)

    # -- output ----------------------------------------------------------------------------------
    def final(self, x, vec, adapters):
        fl = self.model.final_layer
        emb = self._lin("final_layer.adaLN_modulation.1", fl.adaLN_modulation[1], F.silu(vec).to(x.dtype), adapters)
        shift, scale = emb.chunk(2, dim=-1)
        x = fl.norm_final(x) * (1 + scale[:, None]) + shift[:, None]
        return self._lin("final_layer.linear", fl.linear, x, adapters)
