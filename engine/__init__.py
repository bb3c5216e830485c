"""The branched Flux engine shared by RefAny3D and Realiz3D (SPEC.md section 1).

    from realiz3d.engine import Branch, FluxEngine
    engine = FluxEngine(transformer)   # diffusers FluxTransformer2DModel or ComfyUI's Flux module
    out = engine(branches, group_mask, pooled)       # {branch index: prediction [B, N, C]}

Every input is a list of token branches, each with its own timestep, guidance, domain tag,
position ids and LoRA adapter set; a boolean group mask says which branch attends to which.
With one text and one image branch and no mask or adapter it computes exactly what
diffusers' FluxTransformer2DModel computes. Branches that share adapters, timestep, guidance,
domain tag and schedule run as one token stream (branch_layout.py); ``batch_branches=False``
runs each on its own, the reference the batched forward is tested against.
"""
from .attention import (AUTO_ATTENTION, block_sparse_attention, dense_mask, dense_masked_attention,
                        flex_layout_attention, grouped_attention, grouped_layout_attention)
from .branch_layout import BranchLayout
from .branches import Branch
from .flux_engine import FluxEngine, KVCache
from .layers import DiffusersFluxLayers, FluxLayers, flux_layers
from .lora import apply_linear

__all__ = ["AUTO_ATTENTION", "Branch", "BranchLayout", "flex_layout_attention", "grouped_layout_attention", "DiffusersFluxLayers", "FluxEngine", "FluxLayers", "KVCache", "flux_layers", "apply_linear", "block_sparse_attention", "dense_mask", "dense_masked_attention", "grouped_attention"]
