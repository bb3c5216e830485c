"""LoRA files in diffusers' key layout (as ``FluxPipeline.save_lora_weights`` writes them),
attached to a Flux transformer as peft adapters that only the engine applies, per branch.

A file's scale is read as diffusers reads it: from the peft ``LoraConfig`` that
``save_lora_weights(..., transformer_lora_adapter_metadata=...)`` stores in the safetensors
metadata (``lora_adapter_metadata``: ``r``, ``lora_alpha``, ``rank_pattern``,
``alpha_pattern``, ``use_rslora``), else from per-layer ``<module>.alpha`` tensors (kohya
style), else alpha = rank (scale 1). The published RefAny3D files have alpha = rank = 16 and
no metadata: scale 1.
"""
from __future__ import annotations

import collections
import hashlib
import math
import os
from typing import Optional

from torch import nn

from ..renderers.errors import InputError
from .lora import adapter_names


class LoraState(dict):
    """A diffusers-layout LoRA state dict ({'transformer.<module>.lora_A.weight': ...}) that also
    carries what the file says about its scale:

    - ``metadata``: the transformer's peft LoraConfig as stored by diffusers (keys with the
      ``transformer.`` prefix, as ``load_lora_adapter(metadata=...)`` takes them), or None;
    - ``network_alphas``: per-layer alphas from ``.alpha`` keys ({'transformer.<module>.alpha':
      value}, as ``load_lora_adapter(network_alphas=...)`` takes them), or {};
    - ``scales``: {module name without 'transformer.': alpha / rank} for every layer, the factor
      on ``lora_B @ lora_A`` that diffusers (peft) applies when it loads the file.
    """

    metadata: Optional[dict] = None
    network_alphas: dict = {}
    scales: dict = {}

    def scale(self, module_name: str) -> float:
        return self.scales.get(module_name.removeprefix("transformer."), 1.0)


def lora_scales(state: dict, network_alphas: Optional[dict] = None, metadata: Optional[dict] = None) -> dict:
    """{module name: alpha / rank} as diffusers derives the peft config of a file: metadata (a
    LoraConfig dict, keys with or without the ``transformer.`` prefix) first, else per-layer
    alphas (layers without one take the most common alpha, as diffusers' ``get_peft_kwargs``),
    else 1.0."""
    from peft.utils.other import get_pattern_key

    ranks = {k.split(".lora_A.")[0].removeprefix("transformer."): int(v.shape[0])
             for k, v in state.items() if ".lora_A." in k}
    out = {}
    if metadata:
        cfg = {k.removeprefix("transformer."): v for k, v in metadata.items()}
        alpha, rank = cfg.get("lora_alpha"), cfg.get("r")
        alpha_pattern, rank_pattern = cfg.get("alpha_pattern") or {}, cfg.get("rank_pattern") or {}
        for module, r in ranks.items():
            a = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), alpha)
            r = rank_pattern.get(get_pattern_key(rank_pattern.keys(), module), rank) or r
            a = r if a is None else a
            out[module] = float(a) / (math.sqrt(r) if cfg.get("use_rslora") else r)
        return out
    alphas = {k.removeprefix("transformer.").removesuffix(".alpha"): float(v)
              for k, v in (network_alphas or {}).items()}
    if alphas:
        common = collections.Counter(alphas.values()).most_common()[0][0]
        return {module: alphas.get(module, common) / r for module, r in ranks.items()}
    return {module: 1.0 for module in ranks}


def read_lora(path: str, input_name: str) -> LoraState:
    """A diffusers-layout LoRA state dict with its scale (:class:`LoraState`), with clear errors
    for unreadable files. The scale is never folded into the tensors: give ``state.scales`` to
    ``SideLoRAs.add(scale=...)``; ``attach_lora`` hands the metadata or alphas to diffusers."""
    from diffusers import FluxPipeline

    name = os.path.basename(path)
    if not path.endswith(".safetensors"):
        raise InputError(input_name, f"'{name}': LoRA weights load from .safetensors files only.")
    try:
        out = FluxPipeline.lora_state_dict(path, return_alphas=True, return_lora_metadata=True)
    except Exception as exc:
        raise InputError(input_name, f"'{name}' could not be read as a LoRA ({type(exc).__name__}: {exc}); the "
                                     "file may be truncated or not a safetensors LoRA.") from exc
    raw, alphas, metadata = out if isinstance(out, tuple) else (out, None, None)
    if not any(".lora_A." in k for k in raw):
        raise InputError(input_name, f"'{name}' holds no LoRA weights (no '.lora_A.' keys).")
    state = LoraState(raw)
    state.network_alphas = dict(alphas or {})
    state.metadata = ({k: v for k, v in metadata.items() if k.startswith("transformer.")} or None) if metadata else None
    try:
        state.scales = lora_scales(raw, state.network_alphas, state.metadata)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise InputError(input_name, f"'{name}' has LoRA metadata this pack cannot read ({exc}).") from exc
    return state


def check_lora_pairs(state: dict, file_name: str, input_name: str) -> dict:
    """{layer key without '.lora_A/B...': (lora_A, lora_B)} after checking that every layer has both lora_A and lora_B, as 2-D matrices whose ranks agree (lora_A's rows,
    lora_B's columns), and the rank the file's metadata gives that layer (``r`` /
    ``rank_pattern``), if any: a damaged file fails here, naming the layer, instead of as a
    ``size mismatch`` deep inside peft's ``load_state_dict``."""
    downs = {k.split(".lora_A.")[0]: v for k, v in state.items() if ".lora_A." in k}
    ups = {k.split(".lora_B.")[0]: v for k, v in state.items() if ".lora_B." in k}
    if set(downs) != set(ups):
        odd = sorted(set(downs) ^ set(ups))[:3]
        raise InputError(input_name, f"'{file_name}' has layers with only one of lora_A / lora_B (e.g. {odd}); "
                                     "the file is incomplete. Use a complete LoRA file (re-save or re-download it).")
    for layer, down in downs.items():
        up = ups[layer]
        module_name = layer.removeprefix("transformer.")
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise InputError(input_name, f"'{file_name}': layer '{module_name}' has lora_A {tuple(down.shape)} and "
                                         f"lora_B {tuple(up.shape)}, whose ranks disagree; the file is damaged or "
                                         "not a LoRA. Use an intact LoRA file (re-save or re-download it).")
    metadata = getattr(state, "metadata", None)
    if metadata:
        from peft.utils.other import get_pattern_key

        cfg = {k.removeprefix("transformer."): v for k, v in metadata.items()}
        rank, pattern = cfg.get("r"), cfg.get("rank_pattern") or {}
        for layer, down in downs.items():
            module_name = layer.removeprefix("transformer.")
            want = pattern.get(get_pattern_key(pattern.keys(), module_name), rank) if pattern else rank
            if isinstance(want, int) and want != int(down.shape[0]):
                raise InputError(input_name, f"'{file_name}': layer '{module_name}' has rank {down.shape[0]}, but the "
                                             f"file's LoRA config metadata says rank {want}; the file is damaged. "
                                             "Use an intact LoRA file (re-save or re-download it).")
    return {layer: (down, ups[layer]) for layer, down in downs.items()}


def check_lora_fits(transformer: nn.Module, state: dict, path: str, input_name: str) -> None:
    """Every LoRA matrix must match the layer it targets: a LoRA for another model size fails here
    with the sizes named, instead of deep inside peft."""
    name = os.path.basename(path)
    check_lora_pairs(state, name, input_name)
    for key, tensor in state.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        module_name = key.split(".lora_")[0].removeprefix("transformer.")
        try:
            module = transformer.get_submodule(module_name)
        except AttributeError:
            raise InputError(input_name, f"'{name}' targets layer '{module_name}', which this Flux model does not "
                                         "have (a LoRA for another architecture or depth?).") from None
        base = getattr(module, "base_layer", module)
        want = base.in_features if ".lora_A." in key else base.out_features
        got = tensor.shape[1] if ".lora_A." in key else tensor.shape[0]
        if want != got:
            raise InputError(input_name, f"'{name}' is for a model of another size: layer '{module_name}' takes "
                                         f"{want} features in this model, the LoRA has {got}. Use the LoRA trained "
                                         "for this base model.")


def file_digest(path: str) -> str:
    """The first 12 hex digits of the file's sha256: adapters are named by content, not by path."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def attach_lora(transformer: nn.Module, path: str, logical_name: str, input_name: str, strength: float = 1.0,
                unit_scale: bool = False) -> str:
    """Inject the LoRA in ``path`` once per file content (and strength); returns its peft adapter name.

    strength: a factor on the LoRA's update (1: the file as diffusers loads it); unit_scale: the
    update at scale exactly ``strength``, whatever alpha the file gives (OminiControl's generate
    sets every branch's adapter scaling to 1)."""
    adapter = f"{logical_name}_{file_digest(path)}"
    if strength != 1.0 or unit_scale:
        adapter += strength_suffix(strength, unit_scale)
    if adapter not in adapter_names(transformer):
        state = read_lora(path, input_name)
        check_lora_fits(transformer, state, path, input_name)
        # the file's alpha as diffusers' own loader applies it: its LoraConfig metadata, else its alphas
        scale = {"metadata": state.metadata} if state.metadata else {"network_alphas": state.network_alphas or None}
        transformer.load_lora_adapter(dict(state), adapter_name=adapter, prefix="transformer", **scale)
        transformer.disable_lora()       # stock forwards stay base; the engine applies adapters per branch
        if strength != 1.0 or unit_scale:
            from .lora import LoraLayer
            for m in transformer.modules():
                if LoraLayer and isinstance(m, LoraLayer) and adapter in m.scaling:
                    m.scaling[adapter] = strength * (1.0 if unit_scale else m.scaling[adapter])
    return adapter


def strength_suffix(strength: float, unit_scale: bool) -> str:
    """The part of an adapter name that tells its strength (module names cannot hold '.')."""
    return (f"_x{strength:g}".replace(".", "p").replace("-", "m")) + ("u" if unit_scale else "")


def side_scales(state: "LoraState", strength: float = 1.0, unit_scale: bool = False):
    """The ``scale`` argument of ``SideLoRAs.add`` for a file read by :func:`read_lora`, with the
    same strength and unit_scale meaning as :func:`attach_lora`."""
    if unit_scale:
        return float(strength)
    return {module: value * strength for module, value in state.scales.items()}
