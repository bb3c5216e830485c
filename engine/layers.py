"""The weight-layout interface the branched engine runs on, and its diffusers implementation.

The engine (flux_engine.py) only re-orders a Flux forward into token branches; every weight it
touches is reached through a :class:`FluxLayers`, one call per layer. Two layouts implement it:

- :class:`DiffusersFluxLayers`: diffusers' ``FluxTransformer2DModel`` (q, k, v separate; peft
  adapters applied per branch by :func:`engine.lora.apply_linear`). Training and the command
  line use it.
- :class:`engine.bfl_layers.BFLFluxLayers`: Black Forest Labs' layout as ComfyUI builds it
  (fused ``qkv``, ``img_mod``/``txt_mod``, single blocks' ``linear1``/``linear2``,
  ``final_layer``). Calling the host module's own layers lets the host do what it does for its
  own sampler: fp8-stored weights cast per layer, partially loaded models streamed.

Shapes: hidden states ``x`` [B, N, D]; attention tensors [B, N, H, Dh] (heads after tokens,
what engine.attention takes); ``vec`` the time embedding [B, D].
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional

import torch
import torch.nn.functional as F

from .lora import apply_linear


class FluxLayers(ABC):
    """One Flux MM-DiT, reached layer by layer. ``adapters`` is always the branch's tuple of
    LoRA adapter names; a layout applies exactly those (and nothing else) to the layer."""

    num_double: int
    num_single: int
    hidden: int
    heads: int
    has_guidance: bool
    in_channels: int
    #: widths of the T5 states and of the pooled CLIP vector the model takes
    text_dim: int
    pooled_dim: int
    #: the layout's name, for messages ("diffusers", "bfl")
    layout: str = ""

    @property
    def num_blocks(self) -> int:
        return self.num_double + self.num_single

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """The dtype the layers compute in (inputs are cast to it)."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where activations live (under partial loading not always where every weight sits)."""

    # -- inputs ------------------------------------------------------------------------------
    @abstractmethod
    def embed(self, x: torch.Tensor, text: bool, adapters: tuple) -> torch.Tensor:
        """Packed latents [B, N, in_channels] (or T5 states [B, N, 4096] for text) -> [B, N, D]."""

    @abstractmethod
    def time_embedding(self, timestep: torch.Tensor, guidance: Optional[torch.Tensor],
                       pooled: torch.Tensor) -> torch.Tensor:
        """sigma [B] in [0, 1], guidance [B] or None, pooled CLIP [B, P] -> vec [B, D]."""

    @abstractmethod
    def rope(self, ids: torch.Tensor):
        """Position ids [N, 3] -> this layout's rotary table (opaque to the engine)."""

    @abstractmethod
    def apply_rope(self, x: torch.Tensor, rope) -> torch.Tensor:
        """[B, N, H, Dh] rotated by the table of :meth:`rope`."""

    # -- double blocks ---------------------------------------------------------------------------
    @abstractmethod
    def double_modulation(self, i: int, vec: torch.Tensor, text: bool, adapters: tuple) -> tuple:
        """(shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp), each [B, D]."""

    @abstractmethod
    def double_norm(self, i: int, x: torch.Tensor, text: bool, second: bool) -> torch.Tensor:
        """Block i's affine-free LayerNorm before attention (``second``: before the MLP), [B, N, D]."""

    @abstractmethod
    def double_qkv(self, i: int, h: torch.Tensor, text: bool, adapters: tuple) -> tuple:
        """Modulated states [B, N, D] -> q, k (RMS-normed, not rotated), v, each [B, N, H, Dh]."""

    @abstractmethod
    def double_attn_out(self, i: int, o: torch.Tensor, text: bool, adapters: tuple) -> torch.Tensor:
        """Attention output [B, N, D] through the stream's output projection -> [B, N, D]."""

    @abstractmethod
    def double_mlp(self, i: int, h: torch.Tensor, text: bool, adapters: tuple) -> torch.Tensor:
        """Modulated states [B, N, D] through the stream's GELU MLP -> [B, N, D]."""

    # -- single blocks ---------------------------------------------------------------------------
    @abstractmethod
    def single_modulation(self, i: int, vec: torch.Tensor, adapters: tuple) -> tuple:
        """(shift, scale, gate), each [B, D]."""

    @abstractmethod
    def single_norm(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Single block i's affine-free LayerNorm, [B, N, D]."""

    @abstractmethod
    def single_qkv_mlp(self, i: int, h: torch.Tensor, adapters: tuple) -> tuple:
        """-> q, k (normed), v [B, N, H, Dh] and the activated MLP input [B, N, mlp]."""

    @abstractmethod
    def single_out(self, i: int, h: torch.Tensor, adapters: tuple) -> torch.Tensor:
        """[B, N, D + mlp] (attention output, MLP activations) -> [B, N, D]."""

    # -- output ----------------------------------------------------------------------------------
    @abstractmethod
    def final(self, x: torch.Tensor, vec: torch.Tensor, adapters: tuple) -> torch.Tensor:
        """Final AdaLN and projection: [B, N, D] -> [B, N, out_channels]."""

    # -- what the engine's helpers need to know ---------------------------------------------------
    def check_adapters(self, adapters: set) -> None:
        """Raise when a branch names an adapter this model does not hold (never silently skip)."""


class DiffusersFluxLayers(FluxLayers):
    """:class:`FluxLayers` over a diffusers ``FluxTransformer2DModel`` (peft adapters per branch)."""

    layout = "diffusers"

    def __init__(self, transformer):
        c = transformer.config
        self.transformer = transformer
        self.num_double, self.num_single = len(transformer.transformer_blocks), len(transformer.single_transformer_blocks)
        self.heads = c.num_attention_heads
        self.hidden = c.num_attention_heads * c.attention_head_dim
        self.has_guidance = bool(c.guidance_embeds)
        self.in_channels = c.in_channels
        self.text_dim, self.pooled_dim = c.joint_attention_dim, c.pooled_projection_dim

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.x_embedder.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.x_embedder.weight.device

    def embed(self, x, text, adapters):
        t = self.transformer
        return apply_linear(t.context_embedder if text else t.x_embedder, x.to(self.dtype), adapters)

    def time_embedding(self, timestep, guidance, pooled):
        t = self.transformer
        ts = timestep.to(self.dtype) * 1000
        if self.has_guidance:
            return t.time_text_embed(ts, guidance.to(self.dtype) * 1000, pooled)
        return t.time_text_embed(ts, pooled)

    def rope(self, ids):
        return self.transformer.pos_embed(ids)

    def apply_rope(self, x, rope):
        from diffusers.models.embeddings import apply_rotary_emb
        return apply_rotary_emb(x, rope, sequence_dim=1)

    def double_modulation(self, i, vec, text, adapters):
        block = self.transformer.transformer_blocks[i]
        norm = block.norm1_context if text else block.norm1
        return apply_linear(norm.linear, F.silu(vec), adapters).chunk(6, dim=1)

    def double_norm(self, i, x, text, second):
        block = self.transformer.transformer_blocks[i]
        if second:
            return (block.norm2_context if text else block.norm2)(x)
        return (block.norm1_context if text else block.norm1).norm(x)

    def double_qkv(self, i, h, text, adapters):
        return self._qkv(self.transformer.transformer_blocks[i].attn, h, adapters, text)

    def double_attn_out(self, i, o, text, adapters):
        attn = self.transformer.transformer_blocks[i].attn
        return apply_linear(attn.to_add_out if text else attn.to_out[0], o, adapters)

    def double_mlp(self, i, h, text, adapters):
        block = self.transformer.transformer_blocks[i]
        ff = block.ff_context if text else block.ff
        gelu = ff.net[0]
        h = F.gelu(apply_linear(gelu.proj, h, adapters), approximate=gelu.approximate)
        return apply_linear(ff.net[2], h, adapters)

    def single_modulation(self, i, vec, adapters):
        block = self.transformer.single_transformer_blocks[i]
        return apply_linear(block.norm.linear, F.silu(vec), adapters).chunk(3, dim=1)

    def single_norm(self, i, x):
        return self.transformer.single_transformer_blocks[i].norm.norm(x)

    def single_qkv_mlp(self, i, h, adapters):
        block = self.transformer.single_transformer_blocks[i]
        mlp = block.act_mlp(apply_linear(block.proj_mlp, h, adapters))
        return (*self._qkv(block.attn, h, adapters, False), mlp)

    def single_out(self, i, h, adapters):
        return apply_linear(self.transformer.single_transformer_blocks[i].proj_out, h, adapters)

    def final(self, x, vec, adapters):
        t = self.transformer
        emb = apply_linear(t.norm_out.linear, F.silu(vec).to(x.dtype), adapters)
        scale, shift = emb.chunk(2, dim=1)
        x = t.norm_out.norm(x) * (1 + scale)[:, None, :] + shift[:, None, :]
        return apply_linear(t.proj_out, x, adapters)

    def _qkv(self, attn, x, adapters, text: bool):
        proj = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj) if text else (attn.to_q, attn.to_k, attn.to_v)
        norms = (attn.norm_added_q, attn.norm_added_k) if text else (attn.norm_q, attn.norm_k)
        q, k, v = (apply_linear(p, x, adapters).unflatten(-1, (-1, attn.head_dim)) for p in proj)
        return norms[0](q), norms[1](k), v


def flux_layers(model) -> FluxLayers:
    """The layout implementation for ``model``: a FluxLayers as is, a diffusers transformer, or
    a BFL/ComfyUI Flux module (``double_blocks``, ``single_blocks``, ``final_layer``)."""
    if isinstance(model, FluxLayers):
        return model
    if hasattr(model, "transformer_blocks") and hasattr(model, "config"):
        return DiffusersFluxLayers(model)
    if hasattr(model, "double_blocks") and hasattr(model, "single_blocks"):
        from .bfl_layers import BFLFluxLayers
        return BFLFluxLayers(model)
    raise TypeError(f"not a Flux transformer: {type(model).__name__}")
