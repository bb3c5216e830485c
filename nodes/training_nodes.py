"""Training nodes: Train Domain Shifter (Realiz3D stage 1), Train Control (stage 2 or the standard
fine-tuning baseline), Train RefAny3D. Each runs a number of steps on ComfyUI's MODEL (fp8 or
bf16, only read: the trained tensors live beside it; captions through its CLIP, images through
its VAE) or on Load Flux Model's output, with progress and cancel, saves the result into
ComfyUI's model folders and returns the loss curve. Which run folder, whether to resume and which
file names to install are decided by training/runs.py; the nodes pass the choices through."""
from __future__ import annotations

import logging
import os
import re

import comfy.model_management
import comfy.utils
import folder_paths
import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image

from ..renderers.errors import InputError
from ..training.runs import ON_CHANGE, REFUSE, install, plan_run
from . import native
from .common import CATEGORY, PREFIX, ControlEntry, ControlType, FluxClipType, FluxVaeType, ShifterType, model_input
from .flux_nodes import FluxModel
from .paths import model_files_valid, model_path, register_model_folder, resolve_inside

log = logging.getLogger(__name__)
SHIFTERS, LORAS, REFANY3D = "realiz3d_shifters", "loras", "refany3d"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
NO_SHIFTER = "(none: baseline)"


def _folder(name: str, input_name: str, required: bool) -> str:
    """A data folder under ComfyUI's input folder ('' = not used)."""
    if not name:
        if required:
            raise InputError(input_name, "name a folder under ComfyUI's input folder (e.g. realiz3d_train/real).")
        return ""
    path = resolve_inside(folder_paths.get_input_directory(), name, input_name)
    if not os.path.isdir(path):
        raise InputError(input_name, f"'{name}' is not a folder under ComfyUI's input folder.")
    return path


def _output_name(name: str) -> str:
    if not NAME.match(name or "") or ".." in name:
        raise InputError("output_name", f"'{name}' must be a plain file name (letters, digits, '_', '-', '.'; no "
                                        "folders): the result is saved into ComfyUI's model folders under it.")
    return name.removesuffix(".safetensors")


def _runs_root(kind: str) -> str:
    """Where runs keep their checkpoints, config and loss curve: output/realiz3d_training/<kind>/<name>[.N]."""
    return os.path.join(folder_paths.get_output_directory(), "realiz3d_training", kind)


def _model_root(kind: str) -> str:
    register_model_folder(kind)
    return folder_paths.get_folder_paths(kind)[0]


def _install(work: str, files: dict, overwrite: bool, folder: bool = False) -> dict:
    """{src: wanted model file} -> {src: installed path}: training.runs decides the names (never
    another run's file unless ``overwrite``)."""
    return install(work, files, overwrite, log=lambda msg: log.warning("Realiz3D training: %s", msg), folder=folder)


def _common_inputs(steps: int, lr: float):
    return [
        io.Int.Input("steps", default=steps, min=1, max=1_000_000, tooltip="Optimizer steps to run."),
        io.Float.Input("learning_rate", default=lr, min=1e-7, max=10.0, step=1e-5, round=False,
                       tooltip="AdamW learning rate."),
        io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Samples per step."),
        io.Int.Input("size", default=512, min=16, max=2048, step=16,
                     tooltip="Training resolution: images are scaled and centre-cropped to size x size."),
        io.Int.Input("seed", default=0, min=0, max=2 ** 31 - 1,
                     tooltip="Seeds the sample order, noise and timesteps: the same seed gives the same run."),
        io.String.Input("output_name", default="my_run",
                        tooltip="Name of the saved result in the model folders (no folders)."),
        io.Boolean.Input("resume", default=True,
                         tooltip="Continue the newest run of this output name when it has a checkpoint "
                                 "(output/realiz3d_training/...), if its settings are the same (see on_change); "
                                 "off starts a new run in a new folder and keeps the old one."),
        io.Int.Input("checkpoint_every", default=500, min=1, max=1_000_000,
                     tooltip="Steps between checkpoints (one is also written on cancel)."),
    ]


def _late_inputs():
    """Inputs added after the first release: optional, at the end, so saved workflows still validate."""
    return [
        io.MultiType.Input("clip", types=[io.Clip, FluxClipType], optional=True,
                           tooltip="Text encoders for the captions: ComfyUI's CLIP (DualCLIPLoader, type flux) for a "
                                   "MODEL, or Load Flux Model's clip. Unconnected: Load Flux Model's own."),
        io.MultiType.Input("vae", types=[io.Vae, FluxVaeType], optional=True,
                           tooltip="Flux's VAE (Load VAE with ae.safetensors, or Load Flux Model's vae) for the "
                                   "images. Unconnected: Load Flux Model's own."),
        io.Combo.Input("on_change", options=list(ON_CHANGE), default=REFUSE, optional=True,
                       tooltip="When resuming a run whose settings (data, controls, shifters, rank, tau_b, learning "
                               "rate, ...) differ from this node's: refuse and list the differences, continue "
                               "anyway, or start a new run (the old one is kept). More steps are always fine."),
        io.Boolean.Input("overwrite", default=False, optional=True,
                         tooltip="Replace an existing model file of the same name. Off: a file another run (or you) "
                                 "wrote is kept and the result gets a versioned name (NAME_2...)."),
        io.Boolean.Input("gradient_checkpointing", default=True, optional=True,
                         tooltip="Recompute each block in the backward pass: far less memory, about a third "
                                 "slower."),
    ]


def _data_inputs():
    return [
        io.String.Input("real_folder", default="realiz3d_train/real",
                        tooltip="Folder of real photos under ComfyUI's input folder (NAME.png + optional NAME.txt)."),
        io.String.Input("synthetic_folder", default="realiz3d_train/synthetic",
                        tooltip="Folder of synthetic renders under the input folder (NAME.png + NAME.<control>.png "
                                "+ optional NAME.txt); may be empty when meshes_folder is given."),
        io.String.Input("meshes_folder", default="",
                        tooltip="Optional folder of meshes under the input folder, rendered on the fly as "
                                "synthetic samples."),
        io.String.Input("caption", default="a photo", tooltip="Caption of images without a NAME.txt."),
        io.Float.Input("real_ratio", default=0.5, min=0.0, max=1.0, step=0.05, tooltip="Share of real samples."),
    ]


def _train(cfg_dict: dict, model, clip, vae, steps: int, resume: bool, on_change: str, kind: str, name: str,
           root: str):
    """Plan the run (training.runs: resume, refuse or a new folder), train, return (result, run folder)."""
    from ..training import load_config, train
    from ..training.runs import CONTINUE

    cfg_dict["train"].update(cache_dir=os.path.join(folder_paths.get_output_directory(), "realiz3d_training",
                                                    "encoded"), precache=True)
    plan = plan_run(root, name, cfg_dict, bool(resume), on_change or REFUSE)
    for note in plan.notes:
        log.info("%s: %s", kind, note)
    cfg_dict["output"]["dir"] = plan.folder
    cfg = load_config(cfg_dict)
    # a cancel must reach the trainer through should_stop (it then writes a checkpoint and the
    # outputs before returning), not as an exception in the middle of a step; ComfyUI's progress
    # hook raises the interrupt (and clears the flag), so it is caught and remembered here
    pbar = comfy.utils.ProgressBar(steps)
    cancelled = []

    def bar(done: int, total: int) -> None:
        try:
            pbar.update_absolute(done, total)
        except comfy.model_management.InterruptProcessingException:
            cancelled.append(True)

    def should_stop() -> bool:
        return bool(cancelled) or comfy.model_management.processing_interrupted()
    # ComfyUI runs nodes under torch.inference_mode(); training needs autograd, and weights loaded
    # inside inference mode cannot take part in a backward pass until they are normal tensors
    with torch.inference_mode(False), torch.enable_grad():
        if isinstance(model, FluxModel):
            _normal_tensors(model.pipeline.transformer)
            source = {"pipe": model.pipeline}
        else:
            source = {"backbone": _host_backbone(model, clip, vae, cfg)}
        result = train(cfg, progress=bar, should_stop=should_stop, log=lambda msg: log.info("%s: %s", kind, msg),
                       resume=plan.resume, on_change=CONTINUE if plan.continue_anyway else REFUSE, **source)
    return result, plan.folder


def _host_backbone(model, clip, vae, cfg):
    """ComfyUI's MODEL (+ CLIP, VAE) as a training backbone: the module's weights are only read;
    LoRAs, shifters and the embedder live beside it."""
    from ..sampling.runtime import DiffusersCodec, encode_prompt, runtime_from_pipeline
    from ..training.backbone import HostBackbone
    from ..training.memory import training_memory

    if not native.is_host_model(model):
        raise InputError("model", "expects a MODEL (Load Diffusion Model, Load Checkpoint) or the output of Load "
                                  "Flux Model (Realiz3D).")
    module = native.flux_module(model)
    if clip is None:
        raise InputError("clip", "connect Flux's text encoders (DualCLIPLoader, type flux, or Load Flux Model's clip): "
                                 "the captions of the training images are encoded with them.")
    if vae is None:
        raise InputError("vae", "connect Flux's VAE (Load VAE with ae.safetensors, or Load Flux Model's vae).")
    max_len = cfg.train.max_sequence_length
    if isinstance(clip, FluxModel):
        def text(caption):
            cond = encode_prompt(runtime_from_pipeline(clip.pipeline, clip.offload), caption, 1, max_len)
            return cond.embeds[0], cond.pooled[0]
    else:
        if not hasattr(clip, "encode_from_tokens"):
            raise InputError("clip", "expects a CLIP from DualCLIPLoader (type flux) or Load Flux Model's clip.")

        def text(caption):
            cond, pooled = clip.encode_from_tokens(clip.tokenize(caption), return_pooled=True)
            return cond[0], pooled[0]
    if isinstance(vae, FluxModel):
        codec = DiffusersCodec(vae.pipeline.vae)
        images, shift, scale = (lambda im: codec.encode(im, None, "mean")), 0.0, 1.0
    else:
        codec = native.host_codec(vae, model)
        images, shift, scale = (lambda im: vae.encode(im[..., :3])), codec.shift, codec.scale
    dtype, device = native.compute_dtype(model), model.load_device

    def release():
        """After the encoders ran: the model onto the device, ComfyUI evicting what it must
        (the text encoders and the VAE among them) to leave what a step needs."""
        est = training_memory(_layout_of(module), cfg, weight_bytes=0)
        comfy.model_management.load_models_gpu([model], memory_required=est.total)
        _normal_tensors(module)

    from ..training.encode import fingerprint
    if isinstance(clip, FluxModel):
        text_id = fingerprint(clip.pipeline.text_encoder, clip.pipeline.text_encoder_2)
    else:
        text_id = fingerprint(getattr(clip, "cond_stage_model", None))
    vae_id = fingerprint(vae.pipeline.vae if isinstance(vae, FluxModel) else getattr(vae, "first_stage_model", None))
    return HostBackbone(module, dtype, device, text, images, shift, scale, release=release, text_id=text_id,
                        vae_id=vae_id)


def _layout_of(module) -> dict:
    return {"num_double": len(module.double_blocks), "num_single": len(module.single_blocks),
            "hidden": int(module.hidden_size), "mlp": int(module.double_blocks[0].img_mlp[0].out_features)}


def _normal_tensors(module: torch.nn.Module) -> None:
    """Replace inference tensors among ``module``'s parameters and buffers by normal copies (once;
    the model stays what it was for every other node)."""
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None and p.is_inference():
                m._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None and b.is_inference():
                m._buffers[name] = b.clone()


def _control(model, control: str, target: str) -> list:
    """The REALIZ3D_CONTROL that Load Control LoRA gives for these files."""
    from ..engine.control_formats import REALIZ3D, describe_control_lora
    from ..engine.lora_files import attach_lora, file_digest, read_lora
    from ..engine.side_lora import SideLoRAs

    info = describe_control_lora(read_lora(control, "control"), os.path.basename(control), convention=REALIZ3D)
    if isinstance(model, FluxModel):            # the pack's own model: peft adapters, no side LoRAs
        tr = model.pipeline.transformer
        return [ControlEntry(model, attach_lora(tr, control, "control", "control"),
                             attach_lora(tr, target, "target", "target"), None, 0, info)]
    from ..engine.bfl_layers import BFLFluxLayers
    layers, side, names = BFLFluxLayers(native.flux_module(model)), SideLoRAs(), []      # beside the shared weights
    for path, logical, key in ((control, "control", "lora"), (target, "target", "target_lora")):
        state = read_lora(path, key)
        names.append(f"{logical}_{file_digest(path)}")
        side.add(names[-1], state, layers.module_of, layers.hidden, key, os.path.basename(path), scale=state.scales)
    return [ControlEntry(model, names[0], names[1], side, layers.hidden, info)]


def _curve(path) -> torch.Tensor:
    if not path or not os.path.isfile(path):
        return torch.zeros(1, 64, 64, 3)
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0)[None]


def _finish(result) -> None:
    """A cancelled run has written its checkpoint and outputs; end the prompt as cancelled."""
    if result.stopped:
        comfy.model_management.interrupt_current_processing(False)     # the flag is consumed here
        raise comfy.model_management.InterruptProcessingException()


def _base(recipe: str, model, steps, learning_rate, batch_size, size, seed, checkpoint_every,
          gradient_checkpointing=True) -> dict:
    if isinstance(model, FluxModel):
        dtype = str(model.pipeline.transformer.dtype).removeprefix("torch.")
        device = "auto"
    elif native.is_host_model(model):
        dtype = str(native.compute_dtype(model)).removeprefix("torch.")
        device = "cpu" if torch.device(model.load_device).type == "cpu" else "auto"
    else:
        raise InputError("model", "expects a MODEL (Load Diffusion Model, Load Checkpoint) or the output of Load "
                                  "Flux Model (Realiz3D).")
    return {
        "recipe": recipe,
        "model": {"dtype": {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype, "fp32"),
                  "device": device},
        "train": {"steps": steps, "lr": learning_rate, "batch_size": batch_size, "seed": seed, "log_every": 10,
                  "gradient_checkpointing": bool(gradient_checkpointing)},
        "data": {"size": size},
        "checkpoint": {"every": checkpoint_every},
        "output": {"dir": ""},
    }


def _compute_dtype(model):
    return model.pipeline.transformer.x_embedder.weight.dtype if isinstance(model, FluxModel) \
        else native.compute_dtype(model)


class TrainDomainShifter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}TrainDomainShifter", display_name="Train Domain Shifter (Realiz3D)",
            category=f"{CATEGORY}/train",
            description="Realiz3D stage 1: the backbone stays frozen and one domain shifter per block learns the "
                        "gap between synthetic renders (domain S) and real photos (domain R). Saves "
                        "models/realiz3d_shifters/<output_name>.safetensors.",
            inputs=[model_input("The Flux backbone the shifters are for: MODEL (Load Diffusion Model, fp8 or bf16; "
                                "never modified) or Load Flux Model."),
                    *_data_inputs(),
                    io.Int.Input("rank", default=8, min=1, max=256, tooltip="Low-rank size of each shifter."),
                    io.Combo.Input("variant", options=["bias", "token"], default="bias",
                                   tooltip="bias: the method figure's shift per (block, domain), free at inference. "
                                           "token: a token-dependent shift."),
                    *_common_inputs(1000, 1e-4), *_late_inputs()],
            outputs=[ShifterType.Output(display_name="shifter"), io.Image.Output(display_name="loss_curve")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, real_folder, synthetic_folder, meshes_folder, caption, real_ratio, rank, variant,
                steps, learning_rate, batch_size, size, seed, output_name, resume, checkpoint_every, clip=None,
                vae=None, on_change=REFUSE, overwrite=False, gradient_checkpointing=True) -> io.NodeOutput:
        from ..adapters import load_shifters

        name = _output_name(output_name)
        cfg = _base("stage1", model, steps, learning_rate, batch_size, size, seed, checkpoint_every,
                    gradient_checkpointing)
        cfg["data"].update(real=_folder(real_folder, "real_folder", real_ratio > 0),
                           synthetic=_folder(synthetic_folder, "synthetic_folder", False),
                           meshes=_folder(meshes_folder, "meshes_folder", False), caption=caption,
                           real_ratio=real_ratio)
        if real_ratio < 1 and not (cfg["data"]["synthetic"] or cfg["data"]["meshes"]):
            raise InputError("synthetic_folder", "stage 1 needs synthetic samples: name a folder of renders or "
                                                 "of meshes (meshes_folder).")
        cfg["shifters"] = {"rank": rank, "variant": variant}
        result, work = _train(cfg, model, clip, vae, steps, resume, on_change, "Train Domain Shifter", name,
                              _runs_root("shifters"))
        src = result.outputs["shifters"]
        path = _install(work, {src: os.path.join(_model_root(SHIFTERS), name + ".safetensors")}, overwrite)[src]
        _finish(result)
        shifters = load_shifters(path).to(_compute_dtype(model))
        return io.NodeOutput(shifters, _curve(result.loss_curve))


class TrainControl(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        register_model_folder(SHIFTERS)
        files = [NO_SHIFTER] + folder_paths.get_filename_list(SHIFTERS)
        return io.Schema(
            node_id=f"{PREFIX}TrainControl", display_name="Train Control (Realiz3D)",
            category=f"{CATEGORY}/train",
            description="Realiz3D stage 2: a geometry control learned from synthetic renders while real photos, "
                        "through domain reassignment and layer-aware freezing, keep the model photoreal; or, "
                        "with 'baseline' on, the standard fine-tuning it is compared with. Saves "
                        "models/loras/<output_name>_control.safetensors and _target.safetensors.",
            inputs=[model_input("The Flux backbone: MODEL (Load Diffusion Model, fp8 or bf16; never modified) or "
                                "Load Flux Model."),
                    io.Combo.Input("shifter", options=files, default=files[-1] if len(files) > 1 else files[0],
                                   tooltip="Stage-1 shifters (frozen here). Ignored by the baseline."),
                    io.Boolean.Input("baseline", default=False,
                                     tooltip="Standard fine-tuning: same data and budget, no shifters, no domain "
                                             "reassignment, no layer freezing."),
                    *_data_inputs(),
                    io.Combo.Input("control_map", options=["normal", "points", "depth"], default="normal",
                                   tooltip="The control the synthetic samples carry (NAME.<control>.png)."),
                    io.Int.Input("tau_b", default=19, min=0, max=128,
                                 tooltip="Real samples: the first i ~ U{0..tau_b} blocks run in domain S and are not "
                                         "updated; at most the model's block count."),
                    io.Int.Input("lora_rank", default=16, min=1, max=256, tooltip="Rank of both LoRAs."),
                    *_common_inputs(1000, 1e-4), *_late_inputs()],
            outputs=[ControlType.Output(display_name="control"), io.Image.Output(display_name="loss_curve")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, shifter=None):
        return model_files_valid(SHIFTERS, {"shifter": shifter}, allowed=(NO_SHIFTER,))

    @classmethod
    def execute(cls, model, shifter, baseline, real_folder, synthetic_folder, meshes_folder, caption, real_ratio,
                control_map, tau_b, lora_rank, steps, learning_rate, batch_size, size, seed, output_name, resume,
                checkpoint_every, clip=None, vae=None, on_change=REFUSE, overwrite=False,
                gradient_checkpointing=True) -> io.NodeOutput:
        name = _output_name(output_name)
        cfg = _base("stage2", model, steps, learning_rate, batch_size, size, seed, checkpoint_every,
                    gradient_checkpointing)
        cfg["data"].update(real=_folder(real_folder, "real_folder", real_ratio > 0),
                           synthetic=_folder(synthetic_folder, "synthetic_folder", False),
                           meshes=_folder(meshes_folder, "meshes_folder", False), caption=caption,
                           real_ratio=real_ratio, controls=[control_map])
        if real_ratio < 1 and not (cfg["data"]["synthetic"] or cfg["data"]["meshes"]):
            raise InputError("synthetic_folder", "stage 2 needs synthetic samples with control maps: name a folder "
                                                 "of renders or of meshes (meshes_folder).")
        stage2 = {"baseline": bool(baseline), "tau_b": tau_b}
        if not baseline:
            if not shifter or shifter == NO_SHIFTER:
                raise InputError("shifter", "pick the stage-1 shifters (Train Domain Shifter saves them), or turn "
                                            "on 'baseline' for standard fine-tuning.")
            stage2["shifters"] = model_path(SHIFTERS, shifter, "shifter")
        cfg["stage2"] = stage2
        cfg["lora"] = {"rank": lora_rank, "alpha": lora_rank}
        result, work = _train(cfg, model, clip, vae, steps, resume, on_change, "Train Control", name,
                              _runs_root("baseline" if baseline else "control"))
        root = _model_root(LORAS)
        c_src, t_src = result.outputs["control_lora"], result.outputs["target_lora"]
        got = _install(work, {c_src: os.path.join(root, f"{name}_control.safetensors"),
                              t_src: os.path.join(root, f"{name}_target.safetensors")}, overwrite)
        _finish(result)
        return io.NodeOutput(_control(model, got[c_src], got[t_src]), _curve(result.loss_curve))


class TrainRefAny3D(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}TrainRefAny3D", display_name="Train RefAny3D (Realiz3D)",
            category=f"{CATEGORY}/train",
            description="RefAny3D's dual-LoRA training (Reference-LoRA 'default', Domain-LoRA 'coord' and the "
                        "domain embedder) on triplets (image, mesh, pose). Saves models/refany3d/<output_name>/ "
                        "default.safetensors, coord.safetensors, domain_embedder.safetensors.",
            inputs=[model_input("The Flux backbone: MODEL (Load Diffusion Model, fp8 or bf16; never modified) or "
                                "Load Flux Model."),
                    io.String.Input("triplets_folder", default="realiz3d_train/refany3d",
                                    tooltip="Folder under ComfyUI's input folder: NAME.png + NAME.json (mesh, pose, "
                                            "fov, caption); see the pack's training/README.md."),
                    io.Int.Input("views", default=8, min=1, max=60, tooltip="Condition views per mesh."),
                    io.Int.Input("condition_size", default=512, min=16, max=2048, step=16,
                                 tooltip="Size of each condition view."),
                    io.Int.Input("lora_rank", default=16, min=1, max=256, tooltip="Rank of both LoRAs."),
                    io.Float.Input("prompt_dropout", default=0.1, min=0.0, max=1.0, step=0.05,
                                   tooltip="Share of steps trained with an empty prompt."),
                    io.Float.Input("condition_dropout", default=0.1, min=0.0, max=1.0, step=0.05,
                                   tooltip="Share of steps trained with all conditions black (for image CFG)."),
                    *_common_inputs(1000, 1e-4), *_late_inputs()],
            outputs=[io.Image.Output(display_name="loss_curve")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, triplets_folder, views, condition_size, lora_rank, prompt_dropout, condition_dropout,
                steps, learning_rate, batch_size, size, seed, output_name, resume, checkpoint_every, clip=None,
                vae=None, on_change=REFUSE, overwrite=False, gradient_checkpointing=True) -> io.NodeOutput:
        name = _output_name(output_name)
        cfg = _base("refany3d", model, steps, learning_rate, batch_size, size, seed, checkpoint_every,
                    gradient_checkpointing)
        cfg["data"]["refany3d"] = _folder(triplets_folder, "triplets_folder", True)
        cfg["refany3d"] = {"n_views": views, "condition_size": condition_size, "prompt_dropout": prompt_dropout,
                           "condition_dropout": condition_dropout}
        cfg["lora"] = {"rank": lora_rank, "alpha": lora_rank}
        result, work = _train(cfg, model, clip, vae, steps, resume, on_change, "Train RefAny3D", name,
                              _runs_root("refany3d"))
        folder = os.path.join(_model_root(REFANY3D), name)
        _install(work, {result.outputs[k]: os.path.join(folder, f"{k}.safetensors")
                        for k in ("default", "coord", "domain_embedder")}, overwrite, folder=True)
        _finish(result)
        return io.NodeOutput(_curve(result.loss_curve))
