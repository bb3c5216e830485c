"""Loading Flux-family models the way ComfyUI users keep them, fully offline.

Two sources:
- single files (``models/diffusion_models``, ``models/vae``, ``models/text_encoders``) in the
  original key layouts, built from the configs shipped in ``configs/`` with the sizes read
  from each checkpoint (see ``bfl_keys``, ``vae_keys``, ``text_encoders``);
- a diffusers folder (``models/diffusers/<name>/model_index.json``), read with
  ``local_files_only=True``.

Weights are cast to the compute dtype at load (fp8-stored files are upcast, ComfyUI's scaled
fp8 scales applied). Nothing here caches: see ``cache.py``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Union

import torch

from ..renderers.errors import InputError
from . import configs
from .bfl_keys import BFL_PREFIX, bfl_to_diffusers, detect_layout, infer_flux_config
from .text_encoders import (build_on_meta, clip_keys_for, fill, infer_clip_config, infer_t5_config, load_tokenizers,
                            normalize_clip_keys, normalize_t5_keys)
from .vae_keys import detect_vae_layout, infer_vae_config, ldm_to_diffusers_vae
from .weights_io import apply_comfy_fp8_scales, file_label, read_state_dict, resolve_dtype, to_compute

Device = Union[str, torch.device]
FLUX_VAE_LATENT_CHANNELS = 16
# model_index.json entries a Flux pipeline needs, and what each must hold
FOLDER_COMPONENTS = {
    "transformer": "a FluxTransformer2DModel", "vae": "an AutoencoderKL (the 16-channel Flux VAE)",
    "text_encoder": "a CLIPTextModel (CLIP-L)", "text_encoder_2": "a T5EncoderModel (T5-XXL)",
    "tokenizer": "a CLIPTokenizer", "tokenizer_2": "a T5 tokenizer",
    "scheduler": "a FlowMatchEulerDiscreteScheduler",
}


@dataclass
class FluxComponents:
    """Everything a Flux pipeline is made of; ``sources`` names the file or folder of each."""
    transformer: torch.nn.Module
    vae: Optional[torch.nn.Module] = None
    text_encoder: Optional[torch.nn.Module] = None
    text_encoder_2: Optional[torch.nn.Module] = None
    tokenizer: Optional[object] = None
    tokenizer_2: Optional[object] = None
    scheduler: Optional[object] = None
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    sources: Dict[str, str] = field(default_factory=dict)

    def pipeline(self):
        """A diffusers ``FluxPipeline`` over these components (shares the modules, copies nothing)."""
        from diffusers import FluxPipeline

        missing = [n for n in FOLDER_COMPONENTS if getattr(self, n) is None]
        if missing:
            raise InputError(missing[0], f"a Flux pipeline needs {', '.join(missing)}; load them first.")
        return FluxPipeline(scheduler=self.scheduler, vae=self.vae, text_encoder=self.text_encoder,
                            tokenizer=self.tokenizer, text_encoder_2=self.text_encoder_2,
                            tokenizer_2=self.tokenizer_2, transformer=self.transformer)


def _looks_like_sd(keys) -> bool:
    return any(k.startswith(("model.diffusion_model.input_blocks.", "input_blocks.", "conditioner.",
                             "cond_stage_model.", "model.diffusion_model.middle_block.")) for k in keys)


def _diagnose_not_flux(sd, path: str, input_name: str):
    keys = list(sd)
    label = file_label(path)
    if _looks_like_sd(keys):
        raise InputError(input_name, f"{label} is a Stable Diffusion checkpoint, not a Flux transformer. "
                                     "Pick a Flux model (e.g. flux1-dev.safetensors).")
    if detect_vae_layout(sd) != "unknown":
        raise InputError(input_name, f"{label} is a VAE, not a Flux transformer; load it as the VAE.")
    if any("text_model." in k or "SelfAttention" in k for k in keys):
        raise InputError(input_name, f"{label} is a text encoder, not a Flux transformer.")
    raise InputError(input_name, f"{label} is not a Flux transformer (e.g. it has {keys[:2]}).")


def _check_expected(cfg: dict, expected: Optional[dict], path: str, input_name: str):
    """Compare a checkpoint's sizes with what a config or the other components expect."""
    if not expected:
        return
    names = {"hidden size": lambda c: c["num_attention_heads"] * c["attention_head_dim"],
             "in_channels": lambda c: c["in_channels"], "joint_attention_dim": lambda c: c["joint_attention_dim"],
             "pooled_projection_dim": lambda c: c["pooled_projection_dim"],
             "double blocks": lambda c: c["num_layers"], "single blocks": lambda c: c["num_single_layers"]}
    bad = []
    for what, get in names.items():
        try:
            want = get(expected)
        except KeyError:
            continue
        if get(cfg) != want:
            bad.append(f"{what} {get(cfg)} (expected {want})")
    if bad:
        raise InputError(input_name, f"{file_label(path)} does not fit the expected Flux layout: {'; '.join(bad)}.")


def load_transformer(path: str, dtype="fp32", device: Device = "cpu", expected: Optional[Union[dict, str]] = None,
                     input_name: str = "transformer"):
    """A diffusers ``FluxTransformer2DModel`` from one file.

    Accepts BFL keys (with or without ``model.diffusion_model.``; an all-in-one checkpoint's
    other parts are ignored) or diffusers keys. ``expected``: a config dict or a shipped
    config name (``"flux1-dev_transformer"``) whose sizes the file must match.
    Returns the model in eval mode, weights in ``dtype`` on ``device``.
    """
    from diffusers import FluxTransformer2DModel

    dtype = resolve_dtype(dtype)
    sd = read_state_dict(path, input_name)
    if any(k.startswith(BFL_PREFIX) for k in sd):
        sd = {k: v for k, v in sd.items() if k.startswith(BFL_PREFIX)}
    sd = apply_comfy_fp8_scales(sd)
    layout = detect_layout(sd)
    if layout == "unknown":
        _diagnose_not_flux(sd, path, input_name)
    if layout == "bfl":
        sd = bfl_to_diffusers(sd)
    cfg = infer_flux_config(sd)
    _check_expected(cfg, configs.load(expected) if isinstance(expected, str) else expected, path, input_name)
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(cfg)
    return fill(model, to_compute(sd, dtype, device), input_name, path)


def load_vae(path: str, dtype="fp32", device: Device = "cpu", input_name: str = "vae"):
    """A diffusers ``AutoencoderKL`` from a single Flux VAE file (ldm or diffusers keys)."""
    from diffusers import AutoencoderKL

    dtype = vae_dtype(resolve_dtype(dtype))
    sd = apply_comfy_fp8_scales(read_state_dict(path, input_name))
    layout = detect_vae_layout(sd)
    if layout == "unknown":
        raise InputError(input_name, f"{file_label(path)} is not a VAE (no encoder.down / decoder.up blocks).")
    if layout == "ldm":
        sd = ldm_to_diffusers_vae(sd)
    cfg = infer_vae_config(sd)
    if cfg["latent_channels"] != FLUX_VAE_LATENT_CHANNELS:
        raise InputError(input_name, f"{file_label(path)} has {cfg['latent_channels']} latent channels; the Flux "
                                     f"VAE has {FLUX_VAE_LATENT_CHANNELS} (is it a Stable Diffusion VAE?).")
    with torch.device("meta"):
        model = AutoencoderKL.from_config(cfg)
    return fill(model, to_compute(sd, dtype, device), input_name, path)


def load_clip(path: str, dtype="fp32", device: Device = "cpu", num_heads: Optional[int] = None,
              input_name: str = "clip"):
    """A transformers ``CLIPTextModel`` from one file; sizes read from it (heads: see text_encoders)."""
    from transformers import CLIPTextModel

    dtype = resolve_dtype(dtype)
    sd = normalize_clip_keys(apply_comfy_fp8_scales(read_state_dict(path, input_name)), input_name, path)
    model = build_on_meta(CLIPTextModel, infer_clip_config(sd, num_heads))
    return fill(model, to_compute(clip_keys_for(model, sd), dtype, device), input_name, path)


def load_t5(path: str, dtype="fp32", device: Device = "cpu", input_name: str = "t5"):
    """A transformers ``T5EncoderModel`` from one file; every size read from it.
    In fp16, T5's ``wo`` layers stay fp32 (as transformers does: they overflow in fp16)."""
    from transformers import T5EncoderModel

    dtype = resolve_dtype(dtype)
    sd = normalize_t5_keys(apply_comfy_fp8_scales(read_state_dict(path, input_name)), input_name, path)
    keep = tuple(T5EncoderModel._keep_in_fp32_modules or ()) if dtype == torch.float16 else ()
    model = build_on_meta(T5EncoderModel, infer_t5_config(sd))
    return fill(model, to_compute(sd, dtype, device, keep_fp32=keep), input_name, path)


def load_text_encoders(clip_path: str, t5_path: str, dtype="fp32", device: Device = "cpu",
                       clip_tokenizer: Optional[str] = None, t5_tokenizer: Optional[str] = None,
                       clip_num_heads: Optional[int] = None):
    """(CLIPTextModel, T5EncoderModel, CLIP tokenizer or None, T5 tokenizer or None).

    Tokenizers come from local folders only (see ``text_encoders.load_tokenizers``)."""
    clip = load_clip(clip_path, dtype, device, clip_num_heads)
    t5 = load_t5(t5_path, dtype, device)
    tok, tok2 = load_tokenizers(clip_tokenizer, t5_tokenizer, clip.config.max_position_embeddings)
    return clip, t5, tok, tok2


def make_scheduler(guidance_embeds: bool = True):
    """Flux's FlowMatch Euler scheduler from the shipped config: dev's dynamic shift for
    guidance-distilled models, schnell's fixed shift 1 otherwise."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(
        configs.load("flux1-dev_scheduler" if guidance_embeds else "flux1-schnell_scheduler"))


def check_compatible(c: FluxComponents):
    """Raise :class:`InputError` naming the files and sizes when the components do not fit."""
    tc, src = c.transformer.config, c.sources
    checks = [
        ("text_encoder_2", c.text_encoder_2, lambda m: m.config.d_model, tc.joint_attention_dim,
         "joint_attention_dim", "T5 width (d_model)"),
        ("text_encoder", c.text_encoder, lambda m: m.config.hidden_size, tc.pooled_projection_dim,
         "pooled_projection_dim", "CLIP hidden size"),
        ("vae", c.vae, lambda m: 4 * m.config.latent_channels, tc.in_channels,
         "in_channels", "4 x VAE latent channels"),
    ]
    for name, module, get, want, t_name, what in checks:
        if module is not None and get(module) != want:
            raise InputError(name, f"{file_label(src.get(name))} gives {what} {get(module)}, but the transformer "
                                   f"{file_label(src.get('transformer'))} has {t_name} {want}: they belong to "
                                   "different model families.")


def load_single_files(transformer_path: str, vae_path: str, clip_path: str, t5_path: str,
                      clip_tokenizer: Optional[str] = None, t5_tokenizer: Optional[str] = None,
                      dtype="fp32", device: Device = "cpu") -> FluxComponents:
    """All components from ComfyUI-style single files, checked to fit each other."""
    dtype = resolve_dtype(dtype)
    transformer = load_transformer(transformer_path, dtype, device)
    clip, t5, tok, tok2 = load_text_encoders(clip_path, t5_path, dtype, device, clip_tokenizer, t5_tokenizer)
    c = FluxComponents(transformer=transformer, vae=load_vae(vae_path, vae_dtype(dtype), device), text_encoder=clip,
                       text_encoder_2=t5, tokenizer=tok, tokenizer_2=tok2,
                       scheduler=make_scheduler(transformer.config.guidance_embeds), dtype=dtype, device=str(device),
                       sources={"transformer": transformer_path, "vae": vae_path, "text_encoder": clip_path,
                                "text_encoder_2": t5_path, "tokenizer": clip_tokenizer or "",
                                "tokenizer_2": t5_tokenizer or ""})
    check_compatible(c)
    return c


def vae_dtype(dtype: torch.dtype) -> torch.dtype:
    """The Flux VAE's activations overflow fp16 (NaN images at large sizes; ComfyUI never runs it
    in fp16 either): with fp16 asked for, the VAE stays in fp32 (84 M parameters, 0.3 GiB)."""
    return torch.float32 if dtype == torch.float16 else dtype


#: the classes a Flux folder's model_index.json may name for each part (tokenizers: slow or fast)
FOLDER_CLASSES = {
    "transformer": ("FluxTransformer2DModel",), "vae": ("AutoencoderKL",), "text_encoder": ("CLIPTextModel",),
    "text_encoder_2": ("T5EncoderModel",), "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "tokenizer_2": ("T5Tokenizer", "T5TokenizerFast"),
}


def read_model_index(index_path: str, name: str, input_name: str) -> dict:
    """A diffusers folder's model_index.json, checked to describe a Flux pipeline: readable JSON,
    a Flux pipeline class (``_class_name`` FluxPipeline or another Flux* pipeline) and the Flux
    class for every part it lists, so that another model's folder is refused by name rather
    than loaded as Flux."""
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(input_name, f"'{name}': its model_index.json is not valid JSON ({exc}); the folder is "
                                     "damaged. Download the Flux folder again (it needs the model_index.json that "
                                     "diffusers writes).") from None
    if not isinstance(index, dict):
        raise InputError(input_name, f"'{name}': its model_index.json holds a {type(index).__name__}, not the "
                                     "object diffusers writes; the folder is damaged. Download it again.")
    pipeline = index.get("_class_name")
    if pipeline is not None and not (isinstance(pipeline, str) and pipeline.startswith("Flux")):
        raise InputError(input_name, f"'{name}' is a {pipeline} folder, not a Flux one (model_index.json names "
                                     f"{pipeline!r}; expected 'FluxPipeline'). Choose a FLUX.1 diffusers folder.")
    for comp, allowed in FOLDER_CLASSES.items():
        entry = index.get(comp)
        if entry is None:
            continue                     # a missing part is reported with what it should hold
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
            raise InputError(input_name, f"'{name}': model_index.json lists {comp} as {entry!r}, not "
                                         "[library, class]; the folder is damaged. Download it again.")
        cls = entry[1]
        if entry[0] is not None and cls not in allowed:
            raise InputError(input_name, f"'{name}' is not a Flux folder: model_index.json names {cls!r} for "
                                         f"{comp}, where Flux has {allowed[0]}. Choose a FLUX.1 diffusers folder.")
    return index


def load_pipeline_folder(folder: str, dtype="fp32", device: Device = "cpu", input_name: str = "model") -> FluxComponents:
    """The components of a diffusers Flux folder (``model_index.json``), offline."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

    dtype = resolve_dtype(dtype)
    name = os.path.basename(os.path.normpath(folder))
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_path):
        raise InputError(input_name, f"'{name}' is not a diffusers folder (no model_index.json).")
    index = read_model_index(index_path, name, input_name)
    for comp, what in FOLDER_COMPONENTS.items():
        entry = index.get(comp)
        sub = os.path.join(folder, comp)
        if not entry or entry[0] is None or not os.path.isdir(sub) or not os.listdir(sub):
            raise InputError(input_name, f"'{name}' has no {comp}: expected {what} in {comp}/ and listed in "
                                         "model_index.json. Use a complete Flux folder or load the missing part "
                                         "from a single file.")
    models = {"transformer": FluxTransformer2DModel, "vae": AutoencoderKL}
    hf_models = {"text_encoder": CLIPTextModel, "text_encoder_2": T5EncoderModel}
    out = {}
    try:
        for comp, cls in models.items():
            out[comp] = cls.from_pretrained(folder, subfolder=comp, local_files_only=True,
                                            torch_dtype=vae_dtype(dtype) if comp == "vae" else dtype)
        for comp, cls in hf_models.items():
            out[comp] = cls.from_pretrained(os.path.join(folder, comp), dtype=dtype, local_files_only=True)
        out["tokenizer"] = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"), local_files_only=True)
        out["tokenizer_2"] = T5Tokenizer.from_pretrained(os.path.join(folder, "tokenizer_2"), local_files_only=True)
        out["scheduler"] = FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler",
                                                                           local_files_only=True)
    except (OSError, ValueError) as exc:  # incomplete or corrupt sub-folders (EnvironmentError is OSError)
        raise InputError(input_name, f"'{name}' could not be loaded ({type(exc).__name__}: {exc}).") from exc
    for comp in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        out[comp] = out[comp].to(device).eval()
    c = FluxComponents(**out, dtype=dtype, device=str(device),
                       sources={comp: os.path.join(folder, comp) for comp in FOLDER_COMPONENTS})
    check_compatible(c)
    return c
