"""Run the example workflows with the tiny test models: ComfyUI's own loaders swapped for the
pack's Load Flux Model.

The templates load FLUX.1 the way ComfyUI users keep it: Load Diffusion Model (``UNETLoader``),
``DualCLIPLoader`` (type flux), Load VAE (``VAELoader``) and ``CLIPTextEncode``. Those loaders only
know the real model families: they cannot load the tiny random Flux models that the demo and the
end-to-end tests build on the spot (ComfyUI detects a model by its sizes, and a 128-wide Flux is
none of its configs). The pack's Load Flux Model loads a diffusers folder of any size, and its
three outputs stand in for the three loaders: ``model`` for the MODEL, ``clip`` (through Text
Encode (Realiz3D)) for the CLIP, ``vae`` for the VAE. :func:`with_pack_loader` rewrites an API
graph accordingly; everything else (FluxGuidance, the pack's samplers, savers) is kept as it is,
and node ids stay stable (the pack loader takes the UNETLoader's id), so code that edits a template
by node id works on the rewritten graph too.
"""
from __future__ import annotations

import copy

FLUX_LOADER = "Realiz3DLoadFluxModel"
TEXT_ENCODE = "Realiz3DFluxTextEncode"
NOT_USED = "(not used)"
BUILTIN_TOKENIZER = "(ComfyUI built-in)"
#: T5 tokens for the tiny models: the tiny T5 takes up to 512 like FLUX.1-dev's, but every template
#: prompt fits in 64 tokens of its small vocabulary and a shorter text sequence keeps CPU runs quick
TINY_SEQUENCE_LENGTH = 64


def pack_loader_inputs(diffusers_model: str = "FLUX.1-dev", **overrides) -> dict:
    """Inputs of Load Flux Model for a diffusers folder in models/diffusers; every file dropdown the
    diffusers source does not read says "(not used)"."""
    inputs = {"source": "diffusers folder", "diffusers_model": diffusers_model, "transformer": NOT_USED,
              "vae": NOT_USED, "clip": NOT_USED, "t5": NOT_USED, "clip_tokenizer": BUILTIN_TOKENIZER,
              "t5_tokenizer": BUILTIN_TOKENIZER, "dtype": "auto", "device": "auto", "offload": False}
    inputs.update(overrides)
    return inputs


def with_pack_loader(workflow: dict, diffusers_model: str = "FLUX.1-dev",
                     max_sequence_length: int = TINY_SEQUENCE_LENGTH) -> dict:
    """A copy of the API graph ``workflow`` with ComfyUI's Flux loaders replaced by Load Flux Model:

    - the ``UNETLoader`` becomes ``Realiz3DLoadFluxModel`` (same node id; source "diffusers folder",
      ``diffusers_model``, the other file dropdowns "(not used)"); links to its MODEL keep slot 0;
    - links to a ``VAELoader``'s output point to that node's ``vae`` output (slot 2);
    - each ``CLIPTextEncode`` becomes ``Realiz3DFluxTextEncode`` (same id, same text, ``clip`` from the
      loader's slot 1, ``max_sequence_length`` tokens);
    - ``DualCLIPLoader`` and ``VAELoader`` nodes are removed.

    A graph without a UNETLoader is returned unchanged (as a copy). ValueError for graphs this
    cannot express: several UNETLoaders, or a CLIP consumed by a node other than CLIPTextEncode.
    """
    wf = copy.deepcopy(workflow)
    unets = [nid for nid, node in wf.items() if node["class_type"] == "UNETLoader"]
    if not unets:
        return wf
    if len(unets) > 1:
        raise ValueError(f"with_pack_loader: one UNETLoader expected, found {len(unets)} ({unets})")
    loader = unets[0]
    clips = {nid for nid, node in wf.items() if node["class_type"] == "DualCLIPLoader"}
    vaes = {nid for nid, node in wf.items() if node["class_type"] == "VAELoader"}
    wf[loader] = {"class_type": FLUX_LOADER, "inputs": pack_loader_inputs(diffusers_model)}
    for nid, node in list(wf.items()):
        if node["class_type"] == "CLIPTextEncode":
            wf[nid] = {"class_type": TEXT_ENCODE, "inputs": {"clip": [loader, 1], "text": node["inputs"]["text"],
                                                             "max_sequence_length": max_sequence_length}}
            continue
        for name, value in node["inputs"].items():
            if not isinstance(value, list) or len(value) != 2:
                continue
            if value[0] in vaes:
                node["inputs"][name] = [loader, 2]
            elif value[0] in clips:
                raise ValueError(f"with_pack_loader: node {nid} ({node['class_type']}) takes the CLIP of "
                                 f"DualCLIPLoader {value[0]}; only CLIPTextEncode can be replaced")
    for nid in clips | vaes:
        del wf[nid]
    return wf
