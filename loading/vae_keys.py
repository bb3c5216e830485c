"""Flux VAE weights: the original (ldm) key layout <-> diffusers' ``AutoencoderKL``.

The Flux VAE file (``ae.safetensors``, ComfyUI's ``models/vae``) uses the ldm names
(``encoder.down.0.block.0.conv1``, ``decoder.up.3.upsample.conv``, ``mid.attn_1.q``) with the
decoder's up blocks numbered from the lowest resolution upwards in reverse order of diffusers'
``up_blocks``, and 1x1 convolutions where diffusers' attention has linear layers.
"""
from __future__ import annotations

import re
from typing import Dict

import torch

from ..renderers.errors import InputError
from . import configs

StateDict = Dict[str, torch.Tensor]
_LDM_PREFIXES = ("first_stage_model.", "vae.")
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTN_INV = {v: k for k, v in _ATTN.items()}


def _strip(sd: StateDict) -> StateDict:
    for p in _LDM_PREFIXES:
        if any(k.startswith(p) for k in sd):
            return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    return dict(sd)


def _count(keys, pattern: str) -> int:
    return len({m.group(1) for k in keys for m in [re.match(pattern, k)] if m})


def detect_vae_layout(sd: StateDict) -> str:
    """``"ldm"``, ``"diffusers"`` or ``"unknown"``."""
    keys = _strip(sd).keys()
    if any(k.startswith("encoder.down.") for k in keys) or any(k.startswith("decoder.up.") for k in keys):
        return "ldm"
    if any(k.startswith("encoder.down_blocks.") for k in keys):
        return "diffusers"
    return "unknown"


def ldm_to_diffusers_vae(state_dict: StateDict) -> StateDict:
    """Rename an ldm VAE state dict (prefix ``first_stage_model.``/``vae.`` optional) to diffusers'."""
    sd = _strip(state_dict)
    n_up = _count(sd, r"decoder\.up\.(\d+)\.")
    out: StateDict = {}
    for key, t in sd.items():
        k = key
        k = re.sub(r"^(encoder)\.down\.(\d+)\.block\.", r"\1.down_blocks.\2.resnets.", k)
        k = re.sub(r"^(encoder)\.down\.(\d+)\.downsample\.", r"\1.down_blocks.\2.downsamplers.0.", k)
        k = re.sub(r"^decoder\.up\.(\d+)\.block\.", lambda m: f"decoder.up_blocks.{n_up - 1 - int(m.group(1))}.resnets.", k)
        k = re.sub(r"^decoder\.up\.(\d+)\.upsample\.",
                   lambda m: f"decoder.up_blocks.{n_up - 1 - int(m.group(1))}.upsamplers.0.", k)
        k = re.sub(r"\.mid\.block_(\d)\.", lambda m: f".mid_block.resnets.{int(m.group(1)) - 1}.", k)
        m = re.match(r"^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$", k)
        if m:
            k = f"{m.group(1)}.mid_block.attentions.0.{_ATTN[m.group(2)]}.{m.group(3)}"
            if m.group(2) != "norm" and t.ndim == 4:
                t = t[:, :, 0, 0]   # 1x1 conv -> linear
        k = k.replace(".nin_shortcut.", ".conv_shortcut.")
        k = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", k)
        out[k] = t
    return out


def diffusers_to_ldm_vae(state_dict: StateDict) -> StateDict:
    """The inverse of :func:`ldm_to_diffusers_vae` (no prefix)."""
    n_up = _count(state_dict, r"decoder\.up_blocks\.(\d+)\.")
    out: StateDict = {}
    for key, t in state_dict.items():
        k = key
        k = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
        k = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n_up - 1 - int(m.group(1))}.block.", k)
        k = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                   lambda m: f"decoder.up.{n_up - 1 - int(m.group(1))}.upsample.", k)
        k = re.sub(r"\.mid_block\.resnets\.(\d)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}.", k)
        m = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$", k)
        if m:
            k = f"{m.group(1)}.mid.attn_1.{_ATTN_INV[m.group(2)]}.{m.group(3)}"
            if m.group(2) != "group_norm" and t.ndim == 2:
                t = t[:, :, None, None]
        k = k.replace(".conv_shortcut.", ".nin_shortcut.")
        k = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", k)
        out[k] = t
    return out


def infer_vae_config(sd: StateDict) -> dict:
    """An ``AutoencoderKL`` config for a diffusers-keyed VAE state dict: the shipped Flux VAE
    config (scaling 0.3611, shift 0.1159, 32 norm groups) with the sizes read from the shapes
    (channels per level from each level's first conv, resnets per level, latent channels from
    ``encoder.conv_out`` [2 x latent, ...], quant convs and mid attention present or not)."""
    cfg = configs.load("flux_vae")
    n_down = _count(sd, r"encoder\.down_blocks\.(\d+)\.")
    if n_down == 0 or "encoder.conv_out.weight" not in sd or "decoder.conv_out.weight" not in sd:
        raise InputError("vae", "not a VAE: the encoder's or decoder's blocks are missing.")
    cfg["block_out_channels"] = [int(sd[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0])
                                 for i in range(n_down)]
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * n_down
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * n_down
    cfg["layers_per_block"] = _count(sd, r"encoder\.down_blocks\.0\.resnets\.(\d+)\.")
    cfg["in_channels"] = int(sd["encoder.conv_in.weight"].shape[1])
    cfg["out_channels"] = int(sd["decoder.conv_out.weight"].shape[0])
    cfg["latent_channels"] = int(sd["encoder.conv_out.weight"].shape[0] // 2)
    cfg["use_quant_conv"] = "quant_conv.weight" in sd
    cfg["use_post_quant_conv"] = "post_quant_conv.weight" in sd
    cfg["mid_block_add_attention"] = any(".mid_block.attentions." in k for k in sd)
    groups = cfg["norm_num_groups"]
    if any(c % groups for c in cfg["block_out_channels"]):
        raise InputError("vae", f"channels {cfg['block_out_channels']} are not multiples of the Flux VAE's "
                                f"{groups} norm groups: not a Flux-family VAE.")
    return cfg
