"""Loading Flux-family models offline, the way ComfyUI users keep them: the whole public API.

    from loading import load_single_files, load_pipeline_folder, get_or_load
    c = load_single_files("flux1-dev.safetensors", "ae.safetensors", "clip_l.safetensors",
                          "t5xxl_fp16.safetensors", clip_tokenizer=..., t5_tokenizer=..., dtype="bf16")
    pipe = c.pipeline()                                   # a diffusers FluxPipeline

Configs for the supported layouts ship in ``configs/``; sizes are read from each checkpoint.
Nothing here downloads anything or imports ComfyUI.
"""
from .bfl_keys import BFL_PREFIX, bfl_to_diffusers, detect_layout, diffusers_to_bfl, infer_flux_config, rope_axes
from .cache import CACHE, ComponentCache, get_or_load, make_key, release, release_all
from .flux_files import (FluxComponents, check_compatible, load_clip, load_pipeline_folder, load_single_files,
                         load_t5, load_text_encoders, load_transformer, load_vae, make_scheduler)
from .text_encoders import load_tokenizers
from .offload import Offload, no_offload
from .tiny import TinyFiles, tiny_components, write_tiny_set
from .vae_keys import diffusers_to_ldm_vae, infer_vae_config, ldm_to_diffusers_vae
from .weights_io import DTYPES, read_state_dict, resolve_dtype

__all__ = [
    "BFL_PREFIX", "bfl_to_diffusers", "detect_layout", "diffusers_to_bfl", "infer_flux_config", "rope_axes",
    "CACHE", "ComponentCache", "get_or_load", "make_key", "release", "release_all",
    "FluxComponents", "check_compatible", "load_clip", "load_pipeline_folder", "load_single_files", "load_t5",
    "load_text_encoders", "load_transformer", "load_vae", "make_scheduler", "load_tokenizers",
    "Offload", "no_offload", "TinyFiles", "tiny_components", "write_tiny_set", "diffusers_to_ldm_vae", "infer_vae_config",
    "ldm_to_diffusers_vae", "DTYPES", "read_state_dict", "resolve_dtype",
]
