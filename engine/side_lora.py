"""LoRAs applied beside a model's layers, never merged into it: per-branch adapters for a
model the host shares with other nodes (ComfyUI's MODEL).

A LoRA file in diffusers' layout names diffusers' linears (``attn.to_q``, ``proj_mlp``, ...).
On the Black Forest Labs layout several of them are one fused linear: q, k, v are rows of
``img_attn.qkv``; q, k, v and the MLP input are rows of a single block's ``linear1``. A LoRA on
``to_k`` is exactly a LoRA on rows [D, 2D) of ``qkv`` whose other rows are zero, so each part is
stored with its row offset and added to those rows of the fused output: the result equals the
unfused model with the LoRA applied, with no merged weight. BFL's final AdaLN emits (shift,
scale) where diffusers' emits (scale, shift): a LoRA on ``norm_out.linear`` is split in halves
that land swapped.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional, Union

import torch

from ..loading.bfl_keys import bfl_lora_target
from .lora_files import check_lora_pairs
from ..renderers.errors import InputError


@dataclass
class LoRAPart:
    """delta[..., offset:offset + rows] += (x @ down.T) @ up.T * scale."""
    down: torch.Tensor      # lora_A [r, in]
    up: torch.Tensor        # lora_B [rows, r]
    offset: int
    scale: float = 1.0


class SideLoRAs:
    """Adapters by name, each a map BFL module name -> parts; applied by :meth:`apply`."""

    def __init__(self):
        self.layers: dict[str, dict[str, list[LoRAPart]]] = {}
        self.names: set[str] = set()

    def add(self, adapter: str, state: dict, module_of, hidden: int, input_name: str, file_name: str,
            scale: Union[float, Mapping[str, float]] = 1.0) -> None:
        """Map a diffusers-layout LoRA state dict onto the BFL model whose modules
        ``module_of(name)`` returns (None when absent), checking every shape.

        hidden: the model's hidden size (the row offset of the k and v parts).
        scale: the factor on ``lora_B @ lora_A``: one number, or per layer {diffusers module
        name (no ``transformer.`` prefix): alpha / rank} as ``read_lora(...).scales`` gives it
        (layers it leaves out: 1.0)."""
        parts: dict[str, list[LoRAPart]] = {}
        # one check for both paths (pairs, ranks, metadata), shared with the peft path
        for name, (down, up) in check_lora_pairs(state, file_name, input_name).items():
            module_name = re.sub(r"^(transformer\.)", "", name)
            target = bfl_lora_target(module_name)
            if target is None:
                raise InputError(input_name, f"'{file_name}' targets layer '{module_name}', which a Flux model does "
                                             "not have (a LoRA for another architecture?).")
            bfl_name, index, swap = target
            layer_scale = float(scale.get(module_name, 1.0)) if isinstance(scale, Mapping) else float(scale)
            module = module_of(bfl_name)
            if module is None:
                raise InputError(input_name, f"'{file_name}' targets layer '{module_name}', which this Flux model "
                                             "does not have (a LoRA for a deeper model?).")
            if down.shape[1] != module.in_features:
                raise InputError(input_name, f"'{file_name}' is for a model of another size: layer '{module_name}' "
                                             f"takes {module.in_features} features in this model, the LoRA has "
                                             f"{down.shape[1]}. Use the LoRA trained for this base model.")
            offset = index * hidden
            pieces = [(up, offset)]
            if swap:                        # (scale, shift) rows -> BFL's (shift, scale)
                a, b = up.chunk(2, dim=0)
                pieces = [(a, hidden), (b, 0)]
            for rows, off in pieces:
                if off + rows.shape[0] > module.out_features:
                    raise InputError(input_name, f"'{file_name}' is for a model of another size: layer "
                                                 f"'{module_name}' gives {module.out_features} features here, the "
                                                 f"LoRA writes {rows.shape[0]} at row {off}.")
                parts.setdefault(bfl_name, []).append(LoRAPart(down, rows, off, layer_scale))
        if not parts:
            raise InputError(input_name, f"'{file_name}' holds no LoRA weights (no '.lora_A.' keys).")
        for bfl_name, lst in parts.items():
            self.layers.setdefault(bfl_name, {})[adapter] = lst
        self.names.add(adapter)

    def to(self, device, dtype) -> "SideLoRAs":
        """A copy on ``device`` in ``dtype`` (the originals stay where they were loaded)."""
        out = SideLoRAs()
        out.names = set(self.names)
        for name, adapters in self.layers.items():
            out.layers[name] = {a: [LoRAPart(p.down.to(device, dtype), p.up.to(device, dtype), p.offset, p.scale)
                                    for p in lst] for a, lst in adapters.items()}
        return out

    def merge(self, other: "SideLoRAs") -> "SideLoRAs":
        out = SideLoRAs()
        for src in (self, other):
            out.names |= src.names
            for name, adapters in src.layers.items():
                out.layers.setdefault(name, {}).update(adapters)
        return out

    def apply(self, name: str, out: torch.Tensor, x: torch.Tensor, adapters: tuple) -> torch.Tensor:
        """``out`` (the layer's output for ``x``) plus the named adapters' updates of layer ``name``."""
        here: Optional[dict] = self.layers.get(name)
        if not here or not adapters:
            return out
        added = False
        for a in adapters:
            for p in here.get(a, ()):
                d = (x.to(p.down.dtype) @ p.down.T) @ p.up.T
                if not added:
                    out, added = out.clone(), True
                out[..., p.offset:p.offset + p.up.shape[0]] += (d * p.scale).to(out.dtype)
        return out

