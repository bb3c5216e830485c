"""Load Flux Model: a diffusers folder or ComfyUI-style single files, shared and cached."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import comfy
import comfy.model_management
import folder_paths
from comfy_api.latest import io

from ..loading import ComponentCache, Offload, load_pipeline_folder, load_single_files
from ..renderers.errors import InputError
from .common import CATEGORY, PREFIX, FluxClipType, FluxType, FluxVaeType
from .paths import choices_valid, list_model_folders, model_path, register_model_folder

log = logging.getLogger(__name__)
SOURCES = ("diffusers folder", "single files")
BUILTIN_TOKENIZER = "(ComfyUI built-in)"
#: first option of every file dropdown: a template for one source names no file of the other,
#: so a host that validates every dropdown value (0.33) accepts it whatever files a user has
NOT_USED = "(not used)"
#: the ComfyUI model folder each file dropdown lists
FOLDER_OF = {"diffusers_model": "diffusers", "transformer": "diffusion_models", "vae": "vae", "clip": "text_encoders",
             "t5": "text_encoders", "clip_tokenizer": "tokenizers", "t5_tokenizer": "tokenizers"}
#: Loaded models held weakly: ComfyUI's cache of node outputs owns them, so a repeated prompt
#: or a second loader of the same files reuses one copy, and freeing ComfyUI's caches frees it.
MODELS = ComponentCache(weak=True)


@dataclass(eq=False)
class FluxModel:
    """What travels on a REALIZ3D_FLUX socket: the loaded components and a diffusers pipeline."""
    components: object
    pipeline: object
    label: str
    offload: object = None      # loading.Offload when the weights stay in CPU memory


def _builtin_tokenizer(kind: str) -> str:
    root = os.path.dirname(os.path.abspath(comfy.__file__))
    return os.path.join(root, "sd1_tokenizer") if kind == "clip" else os.path.join(root, "text_encoders",
                                                                                   "t5_tokenizer")


def _device(choice: str):
    return comfy.model_management.get_torch_device() if choice == "auto" else choice


def _dtype(choice: str, device) -> str:
    if choice != "auto":
        return choice
    return "fp32" if str(device) == "cpu" else "bf16"


class LoadFluxModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        register_model_folder("tokenizers")
        diffusers = list_model_folders("diffusers")
        models, vaes = folder_paths.get_filename_list("diffusion_models"), folder_paths.get_filename_list("vae")
        encoders = folder_paths.get_filename_list("text_encoders")
        tokenizers = [BUILTIN_TOKENIZER] + list_model_folders("tokenizers", marker=None)

        def combo(name, options, tooltip):
            return io.Combo.Input(name, options=[NOT_USED] + list(options), default=NOT_USED, tooltip=tooltip)

        return io.Schema(
            node_id=f"{PREFIX}LoadFluxModel",
            display_name="Load Flux Model (Realiz3D)",
            category=f"{CATEGORY}/model",
            description="Loads a Flux-family model for what ComfyUI's own loaders cannot load: diffusers "
                        "folders and the tiny test models. For FLUX.1 single files use Load Diffusion Model, "
                        "DualCLIPLoader and Load VAE: the pack's samplers take those directly. The same files "
                        "load once and are shared by every node and prompt.",
            inputs=[
                io.Combo.Input("source", options=list(SOURCES), default=SOURCES[0],
                               tooltip="diffusers folder: a folder with model_index.json in models/diffusers. "
                                       "single files: transformer, VAE, CLIP-L and T5 files as ComfyUI keeps them."),
                combo("diffusers_model", diffusers, "Folder in models/diffusers (source: diffusers folder)."),
                combo("transformer", models, "Flux transformer in models/diffusion_models, original Black Forest "
                                             "Labs keys (source: single files)."),
                combo("vae", vaes, "Flux VAE (16 channels) in models/vae (source: single files)."),
                combo("clip", encoders, "CLIP-L text encoder in models/text_encoders (source: single files)."),
                combo("t5", encoders, "T5-XXL text encoder in models/text_encoders (source: single files)."),
                io.Combo.Input("clip_tokenizer", options=tokenizers, default=BUILTIN_TOKENIZER,
                               tooltip="CLIP tokenizer: ComfyUI's own, or a folder in models/tokenizers."),
                io.Combo.Input("t5_tokenizer", options=tokenizers, default=BUILTIN_TOKENIZER,
                               tooltip="T5 tokenizer: ComfyUI's own, or a folder in models/tokenizers."),
                io.Combo.Input("dtype", options=["auto", "fp32", "bf16", "fp16"], default="auto",
                               tooltip="Compute precision. auto: bf16 on a GPU, fp32 on the CPU. fp8-stored "
                                       "weights are upcast to it when loaded."),
                io.Combo.Input("device", options=["auto", "cpu", "cuda"], default="auto",
                               tooltip="Where the model runs. auto: ComfyUI's device."),
                io.Boolean.Input("offload", default=False,
                                 tooltip="For GPUs with less memory: keep the weights in CPU memory and move "
                                         "each component (text encoders, transformer, VAE) to the GPU only "
                                         "while it runs. Slower; the GPU holds one component at a time."),
            ],
            outputs=[FluxType.Output(display_name="model"), FluxClipType.Output(display_name="clip"),
                     FluxVaeType.Output(display_name="vae")],
        )

    @classmethod
    def validate_inputs(cls, diffusers_model=None, transformer=None, vae=None, clip=None, t5=None,
                        clip_tokenizer=None, t5_tokenizer=None):
        return choices_valid(lambda value, name: model_path(FOLDER_OF[name], value, name),
                             {"diffusers_model": diffusers_model, "transformer": transformer, "vae": vae, "clip": clip,
                              "t5": t5, "clip_tokenizer": clip_tokenizer, "t5_tokenizer": t5_tokenizer},
                             allowed=(NOT_USED, BUILTIN_TOKENIZER))

    @classmethod
    def execute(cls, source, diffusers_model, transformer, vae, clip, t5, clip_tokenizer, t5_tokenizer, dtype,
                device, offload=False) -> io.NodeOutput:
        run_on = _device(device)
        dt = _dtype(dtype, run_on)
        dev = "cpu" if offload else run_on          # offloaded weights load into CPU memory
        helper = Offload(run_on) if offload else None
        if source == "diffusers folder":
            _require(diffusers_model, "diffusers_model", "a folder in models/diffusers")
            folder = model_path("diffusers", diffusers_model, "diffusers_model")
            paths, label = [folder], diffusers_model

            def load():
                log.info("Realiz3D: loading Flux model %s (%s, %s)", label, dt, dev)
                return _model(load_pipeline_folder(folder, dt, dev, "diffusers_model"), label, helper)
        else:
            for value, name in ((transformer, "transformer"), (vae, "vae"), (clip, "clip"), (t5, "t5")):
                _require(value, name, "a file for the source 'single files'")
            files = [model_path("diffusion_models", transformer, "transformer"), model_path("vae", vae, "vae"),
                     model_path("text_encoders", clip, "clip"), model_path("text_encoders", t5, "t5")]
            toks = [_builtin_tokenizer("clip") if clip_tokenizer == BUILTIN_TOKENIZER
                    else model_path("tokenizers", clip_tokenizer, "clip_tokenizer"),
                    _builtin_tokenizer("t5") if t5_tokenizer == BUILTIN_TOKENIZER
                    else model_path("tokenizers", t5_tokenizer, "t5_tokenizer")]
            paths, label = files + toks, transformer

            def load():
                log.info("Realiz3D: loading Flux model %s (%s, %s)", label, dt, dev)
                return _model(load_single_files(*files, clip_tokenizer=toks[0], t5_tokenizer=toks[1], dtype=dt,
                                                device=dev), label, helper)
        model = MODELS.get_or_load("flux", paths, dt, dev, load, extra=(str(run_on), bool(offload)))
        return io.NodeOutput(model, model, model)


def _require(value: str, input_name: str, what: str) -> None:
    if not value or value == NOT_USED:
        raise InputError(input_name, f"choose {what}.")


class FluxTextEncode(io.ComfyNode):
    """CONDITIONING from the text encoders of a model loaded by Load Flux Model, in the format
    CLIP Text Encode gives for Flux (T5 states with the pooled CLIP output)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}FluxTextEncode",
            display_name="Text Encode (Realiz3D)",
            category=f"{CATEGORY}/model",
            description="Encodes a prompt with the text encoders of Load Flux Model (for FLUX.1 loaded by "
                        "ComfyUI's DualCLIPLoader use CLIP Text Encode).",
            inputs=[FluxClipType.Input("clip", tooltip="Load Flux Model's clip output."),
                    io.String.Input("text", multiline=True, default="a photo of the object on a wooden table",
                                    tooltip="The prompt."),
                    io.Int.Input("max_sequence_length", default=512, min=16, max=512,
                                 tooltip="T5 tokens (FLUX.1-dev: 512).")],
            outputs=[io.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, clip, text, max_sequence_length=512) -> io.NodeOutput:
        from ..sampling.runtime import encode_prompt, runtime_from_pipeline
        flux = require_model(clip, "clip")
        cond = encode_prompt(runtime_from_pipeline(flux.pipeline, flux.offload), text, 1, max_sequence_length)
        return io.NodeOutput([[cond.embeds.cpu(), {"pooled_output": cond.pooled.cpu()}]])


def _model(components, label, offload=None) -> FluxModel:
    return FluxModel(components=components, pipeline=components.pipeline(), label=label, offload=offload)


def require_model(model, input_name: str = "model") -> FluxModel:
    if not isinstance(model, FluxModel):
        raise InputError(input_name, "expects the output of Load Flux Model (Realiz3D).")
    return model
