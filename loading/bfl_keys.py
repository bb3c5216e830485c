"""Flux transformer weights: the original Black Forest Labs key layout <-> diffusers' layout.

ComfyUI users keep Flux transformers as single files in BFL's layout (``img_in.weight``,
``double_blocks.0.img_attn.qkv.weight``, ``single_blocks.0.linear1.weight``, ...), often with
ComfyUI's ``model.diffusion_model.`` prefix; diffusers' ``FluxTransformer2DModel`` names the same
weights differently and keeps q, k, v (and the single blocks' MLP input) as separate linears.

Every size (hidden size, block counts, MLP width, guidance) is read from the checkpoint, so the
same code converts FLUX.1-dev, schnell and the tiny test models. The two directions share one
table, so they cannot drift apart.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Tuple

import torch

from ..renderers.errors import InputError

BFL_PREFIX = "model.diffusion_model."
# rope axes of FLUX.1 (time, row, col) for its 128-dim heads; other head sizes: see rope_axes()
FLUX1_AXES_DIMS_ROPE = (16, 56, 56)

StateDict = Dict[str, torch.Tensor]

# (BFL name, diffusers name) of weights that only change their name; a module name stands for
# its .weight and .bias, a name ending in .scale for that one tensor.
_TOP_RENAMES: List[Tuple[str, str]] = [
    ("img_in", "x_embedder"),
    ("txt_in", "context_embedder"),
    ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
    ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
    ("final_layer.linear", "proj_out"),
]
_DOUBLE_RENAMES: List[Tuple[str, str]] = [
    ("img_mod.lin", "norm1.linear"),
    ("txt_mod.lin", "norm1_context.linear"),
    ("img_attn.proj", "attn.to_out.0"),
    ("txt_attn.proj", "attn.to_add_out"),
    ("img_mlp.0", "ff.net.0.proj"),
    ("img_mlp.2", "ff.net.2"),
    ("txt_mlp.0", "ff_context.net.0.proj"),
    ("txt_mlp.2", "ff_context.net.2"),
    ("img_attn.norm.query_norm.scale", "attn.norm_q.weight"),
    ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
    ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
    ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"),
]
_SINGLE_RENAMES: List[Tuple[str, str]] = [
    ("modulation.lin", "norm.linear"),
    ("linear2", "proj_out"),
    ("norm.query_norm.scale", "attn.norm_q.weight"),
    ("norm.key_norm.scale", "attn.norm_k.weight"),
]
# fused BFL linears and the diffusers linears they hold, in order along the output dim
_DOUBLE_FUSED = [
    ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
]
_SINGLE_FUSED = ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"))
# BFL's final AdaLN emits (shift, scale); diffusers' AdaLayerNormContinuous expects (scale, shift)
_FINAL_ADALN = ("final_layer.adaLN_modulation.1", "norm_out.linear")


def _rename_pairs(bfl: str, diff: str) -> List[Tuple[str, str]]:
    if bfl.endswith(".scale"):
        return [(bfl, diff)]
    return [(bfl + s, diff + s) for s in (".weight", ".bias")]


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def strip_prefix(state_dict: StateDict) -> StateDict:
    """Drop ComfyUI's ``model.diffusion_model.`` prefix where present (no copy of tensors)."""
    return {k[len(BFL_PREFIX):] if k.startswith(BFL_PREFIX) else k: v for k, v in state_dict.items()}


def detect_layout(state_dict: StateDict) -> str:
    """``"bfl"`` (original, with or without prefix), ``"diffusers"``, or ``"unknown"``."""
    keys = strip_prefix(state_dict).keys()
    if "img_in.weight" in keys and any(k.startswith("double_blocks.") for k in keys):
        return "bfl"
    if "x_embedder.weight" in keys and any(k.startswith("transformer_blocks.") for k in keys):
        return "diffusers"
    return "unknown"


def _block_indices(keys: Iterable[str], prefix: str) -> int:
    """Number of blocks named ``prefix.<i>.``; the indices must run 0..n-1 without gaps."""
    found = {int(m.group(1)) for k in keys for m in [re.match(re.escape(prefix) + r"\.(\d+)\.", k)] if m}
    if found and found != set(range(max(found) + 1)):
        missing = sorted(set(range(max(found) + 1)) - found)
        raise InputError("transformer", f"the checkpoint lacks {prefix} {missing}: the file is incomplete.")
    return len(found)


def bfl_to_diffusers(state_dict: StateDict) -> StateDict:
    """Convert a BFL-layout Flux state dict (prefix optional) to diffusers' keys.

    Sizes come from the tensors: the hidden size from ``img_in.weight`` [hidden, in_channels],
    the single blocks' MLP width from what remains of ``linear1`` after q, k and v.
    Raises :class:`InputError` for keys this layout does not know (a different model family,
    or a LoRA mixed into the file) so that nothing is silently dropped.
    """
    sd = dict(strip_prefix(state_dict))
    if "img_in.weight" not in sd:
        raise InputError("transformer", "not a Flux transformer in the original (BFL) layout: no img_in.weight.")
    hidden = sd["img_in.weight"].shape[0]
    out: StateDict = {}

    def move(src: str, dst: str):
        if src in sd:
            out[dst] = sd.pop(src)

    for bfl, diff in _TOP_RENAMES:
        for s, d in _rename_pairs(bfl, diff):
            move(s, d)
    for s in (".weight", ".bias"):
        if _FINAL_ADALN[0] + s in sd:
            out[_FINAL_ADALN[1] + s] = _swap_halves(sd.pop(_FINAL_ADALN[0] + s))
    for i in range(_block_indices(list(sd), "double_blocks")):
        src, dst = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for bfl, diff in _DOUBLE_RENAMES:
            for s, d in _rename_pairs(bfl, diff):
                move(src + s, dst + d)
        for fused, parts in _DOUBLE_FUSED:
            for s in (".weight", ".bias"):
                if src + fused + s in sd:
                    for name, piece in zip(parts, sd.pop(src + fused + s).chunk(3, dim=0)):
                        out[dst + name + s] = piece
    for i in range(_block_indices(list(sd), "single_blocks")):
        src, dst = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for bfl, diff in _SINGLE_RENAMES:
            for s, d in _rename_pairs(bfl, diff):
                move(src + s, dst + d)
        fused, parts = _SINGLE_FUSED
        for s in (".weight", ".bias"):
            if src + fused + s in sd:
                t = sd.pop(src + fused + s)
                sizes = (hidden, hidden, hidden, t.shape[0] - 3 * hidden)
                if sizes[-1] <= 0:
                    raise InputError("transformer", f"single_blocks.{i}.linear1 has {t.shape[0]} outputs, fewer "
                                                    f"than q, k, v of hidden size {hidden} need.")
                for name, piece in zip(parts, torch.split(t, sizes, dim=0)):
                    out[dst + name + s] = piece
    if sd:
        raise InputError("transformer", f"{len(sd)} keys are not part of a Flux transformer, e.g. "
                                        f"{sorted(sd)[:3]}; is this a different model or a LoRA?")
    return out


def diffusers_to_bfl(state_dict: StateDict, prefix: str = "") -> StateDict:
    """Convert diffusers' Flux keys to the BFL layout (q, k, v re-fused); ``prefix`` is put in
    front of every key (``BFL_PREFIX`` writes files the way ComfyUI keeps them)."""
    sd = dict(state_dict)
    out: StateDict = {}

    def move(src: str, dst: str):
        if src in sd:
            out[prefix + dst] = sd.pop(src)

    for bfl, diff in _TOP_RENAMES:
        for s, d in _rename_pairs(bfl, diff):
            move(d, s)
    for s in (".weight", ".bias"):
        if _FINAL_ADALN[1] + s in sd:
            out[prefix + _FINAL_ADALN[0] + s] = _swap_halves(sd.pop(_FINAL_ADALN[1] + s))
    for i in range(_block_indices(list(sd), "transformer_blocks")):
        src, dst = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for bfl, diff in _DOUBLE_RENAMES:
            for s, d in _rename_pairs(bfl, diff):
                move(src + d, dst + s)
        for fused, parts in _DOUBLE_FUSED:
            for s in (".weight", ".bias"):
                if all(src + p + s in sd for p in parts):
                    out[prefix + dst + fused + s] = torch.cat([sd.pop(src + p + s) for p in parts], dim=0)
    for i in range(_block_indices(list(sd), "single_transformer_blocks")):
        src, dst = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for bfl, diff in _SINGLE_RENAMES:
            for s, d in _rename_pairs(bfl, diff):
                move(src + d, dst + s)
        fused, parts = _SINGLE_FUSED
        for s in (".weight", ".bias"):
            if all(src + p + s in sd for p in parts):
                out[prefix + dst + fused + s] = torch.cat([sd.pop(src + p + s) for p in parts], dim=0)
    if sd:
        raise InputError("transformer", f"{len(sd)} keys are not part of diffusers' FluxTransformer2DModel, "
                                        f"e.g. {sorted(sd)[:3]}.")
    return out


def rope_axes(head_dim: int) -> Tuple[int, int, int]:
    """RoPE axis sizes (time, row, col) summing to ``head_dim``.

    FLUX.1's 128-dim heads use (16, 56, 56). Other head sizes (test models, other Flux-family
    layouts) are not fixed by any published config; we keep FLUX.1's proportions: the row and
    col axes get ``a`` = 3/8 of the head rounded to an even number (rotary pairs need even
    sizes), the time axis the rest: 64 -> (16, 24, 24), 32 -> (8, 12, 12).
    """
    if head_dim == 128:
        return FLUX1_AXES_DIMS_ROPE
    a = 2 * round(3 * head_dim / 16)
    return (head_dim - 2 * a, a, a)


def infer_flux_config(state_dict: StateDict) -> dict:
    """A ``FluxTransformer2DModel`` config read from a checkpoint's shapes (BFL or diffusers keys).

    Read: in/out channels, hidden size, block counts, head size (from the q-norm scale
    [head_dim]), heads = hidden / head_dim, text and pooled widths, guidance. Checked: the MLP
    width is 4 x hidden, the only ratio diffusers' blocks build. Not readable from shapes:
    the RoPE axes (see :func:`rope_axes`) and patch_size (always 1: Flux packs 2x2 patches
    outside the model).
    """
    layout = detect_layout(state_dict)
    if layout == "unknown":
        raise InputError("transformer", "not a Flux transformer: neither img_in.weight (original layout) nor "
                                        "x_embedder.weight (diffusers layout) is in the file.")
    sd = strip_prefix(state_dict)
    bfl = layout == "bfl"
    x_in = sd["img_in.weight" if bfl else "x_embedder.weight"]
    hidden, in_channels = x_in.shape
    out_w = sd.get("final_layer.linear.weight" if bfl else "proj_out.weight")
    q_norm = sd.get("double_blocks.0.img_attn.norm.query_norm.scale" if bfl else "transformer_blocks.0.attn.norm_q.weight")
    if q_norm is None:
        q_norm = sd.get("single_blocks.0.norm.query_norm.scale" if bfl else "single_transformer_blocks.0.attn.norm_q.weight")
    if out_w is None or q_norm is None:
        raise InputError("transformer", "the Flux checkpoint lacks its output layer or its attention norms: "
                                        "the file is incomplete.")
    head_dim = q_norm.shape[0]
    if hidden % head_dim:
        raise InputError("transformer", f"hidden size {hidden} is not a multiple of the head size {head_dim}.")
    ctx = sd["txt_in.weight" if bfl else "context_embedder.weight"]
    vec = sd["vector_in.in_layer.weight" if bfl else "time_text_embed.text_embedder.linear_1.weight"]
    mlp = sd.get("double_blocks.0.img_mlp.0.weight" if bfl else "transformer_blocks.0.ff.net.0.proj.weight")
    if mlp is not None and mlp.shape[0] != 4 * hidden:
        raise InputError("transformer", f"MLP width {mlp.shape[0]} is not 4 x hidden size {hidden}; diffusers' "
                                        "FluxTransformer2DModel only builds that ratio.")
    return {
        "_class_name": "FluxTransformer2DModel",
        "patch_size": 1,
        "in_channels": int(in_channels),
        "out_channels": None if out_w.shape[0] == in_channels else int(out_w.shape[0]),
        "num_layers": _block_indices(sd, "double_blocks" if bfl else "transformer_blocks"),
        "num_single_layers": _block_indices(sd, "single_blocks" if bfl else "single_transformer_blocks"),
        "attention_head_dim": int(head_dim),
        "num_attention_heads": int(hidden // head_dim),
        "joint_attention_dim": int(ctx.shape[1]),
        "pooled_projection_dim": int(vec.shape[1]),
        "guidance_embeds": any(k.startswith("guidance_in." if bfl else "time_text_embed.guidance_embedder.")
                               for k in sd),
        "axes_dims_rope": list(rope_axes(int(head_dim))),
    }


def bfl_lora_target(module: str):
    """Where a LoRA on diffusers' linear ``module`` acts in the BFL layout: (BFL linear, index of
    the part along the fused output in units of the hidden size, halves swapped) or None.

    ``transformer_blocks.3.attn.to_k`` -> ('double_blocks.3.img_attn.qkv', 1, False);
    ``single_transformer_blocks.0.proj_mlp`` -> ('single_blocks.0.linear1', 3, False);
    ``norm_out.linear`` -> ('final_layer.adaLN_modulation.1', 0, True). Uses the same tables as
    the weight converters above."""
    m = re.match(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$", module)
    if m is None:
        if module == _FINAL_ADALN[1]:
            return _FINAL_ADALN[0], 0, True
        for bfl, diff in _TOP_RENAMES:
            if diff == module:
                return bfl, 0, False
        return None
    kind, i, rest = m.groups()
    double = kind == "transformer_blocks"
    prefix = f"{'double_blocks' if double else 'single_blocks'}.{i}."
    for bfl, diff in (_DOUBLE_RENAMES if double else _SINGLE_RENAMES):
        if diff == rest and not bfl.endswith(".scale"):
            return prefix + bfl, 0, False
    for fused, parts in (_DOUBLE_FUSED if double else [_SINGLE_FUSED]):
        if rest in parts:
            return prefix + fused, parts.index(rest), False
    return None
