"""Training nodes: Train Domain Shifter (Realiz3D stage 1), Train Control (stage 2 or the standard
fine-tuning baseline), Train RefAny3D. Each runs a number of steps on the loaded model with
progress and cancel, saves the result into ComfyUI's model folders, and returns the loss curve."""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile

import comfy.model_management
import comfy.utils
import folder_paths
import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image

from ..renderers.errors import InputError
from .common import CATEGORY, PREFIX, ControlType, FluxType, ShifterType
from .flux_nodes import require_model
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


def _work_dir(name: str, kind: str) -> str:
    """Where a run keeps its checkpoints, config and loss curve: output/realiz3d_training/<kind>/<name>."""
    return os.path.join(folder_paths.get_output_directory(), "realiz3d_training", kind, name)


def _model_root(kind: str) -> str:
    register_model_folder(kind)
    return folder_paths.get_folder_paths(kind)[0]


def _install(src: str, dst: str) -> str:
    """Copy a trained file into a model folder atomically (no half-written file on failure)."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst), prefix=".tmp_", suffix=".safetensors")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dst


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
                         tooltip="Continue from the newest checkpoint of this output name when there is one "
                                 "(output/realiz3d_training/...); off starts afresh."),
        io.Int.Input("checkpoint_every", default=500, min=1, max=1_000_000,
                     tooltip="Steps between checkpoints (one is also written on cancel)."),
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


def _train(cfg_dict: dict, flux, steps: int, resume: bool, kind: str):
    from ..training import load_config, train

    work = cfg_dict["output"]["dir"]
    os.makedirs(work, exist_ok=True)
    cfg = load_config(cfg_dict)
    ckpts = os.path.join(work, "checkpoints")
    has_ckpt = os.path.isdir(ckpts) and any(f.endswith(".ckpt") for f in os.listdir(ckpts))
    if not resume and os.path.isdir(ckpts):
        shutil.rmtree(ckpts)
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
        _normal_tensors(flux.pipeline.transformer)
        result = train(cfg, pipe=flux.pipeline, progress=bar,
                       should_stop=should_stop,
                       log=lambda msg: log.info("%s: %s", kind, msg), resume=ckpts if resume and has_ckpt else None)
    return result


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


def _curve(path) -> torch.Tensor:
    if not path or not os.path.isfile(path):
        return torch.zeros(1, 64, 64, 3)
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0)[None]


def _finish(result) -> None:
    """A cancelled run has written its checkpoint and outputs; end the prompt as cancelled."""
    if result.stopped:
        comfy.model_management.interrupt_current_processing(False)     # the flag is consumed here
        raise comfy.model_management.InterruptProcessingException()


def _base(recipe: str, work: str, flux, steps, learning_rate, batch_size, size, seed, checkpoint_every) -> dict:
    dtype = str(flux.pipeline.transformer.dtype).removeprefix("torch.")
    return {
        "recipe": recipe,
        "model": {"dtype": {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype, "fp32")},
        "train": {"steps": steps, "lr": learning_rate, "batch_size": batch_size, "seed": seed, "log_every": 10},
        "data": {"size": size},
        "checkpoint": {"every": checkpoint_every},
        "output": {"dir": work},
    }


class TrainDomainShifter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}TrainDomainShifter", display_name="Train Domain Shifter (Realiz3D)",
            category=f"{CATEGORY}/train",
            description="Realiz3D stage 1: the backbone stays frozen and one domain shifter per block learns the "
                        "gap between synthetic renders (domain S) and real photos (domain R). Saves "
                        "models/realiz3d_shifters/<output_name>.safetensors.",
            inputs=[FluxType.Input("model", tooltip="From Load Flux Model: the backbone the shifters are for."),
                    *_data_inputs(),
                    io.Int.Input("rank", default=8, min=1, max=256, tooltip="Low-rank size of each shifter."),
                    io.Combo.Input("variant", options=["bias", "token"], default="bias",
                                   tooltip="bias: the method figure's shift per (block, domain), free at inference. "
                                           "token: a token-dependent shift."),
                    *_common_inputs(1000, 1e-4)],
            outputs=[ShifterType.Output(display_name="shifter"), io.Image.Output(display_name="loss_curve")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, real_folder, synthetic_folder, meshes_folder, caption, real_ratio, rank, variant,
                steps, learning_rate, batch_size, size, seed, output_name, resume, checkpoint_every) -> io.NodeOutput:
        from ..adapters import load_shifters

        flux = require_model(model)
        name = _output_name(output_name)
        work = _work_dir(name, "shifters")
        cfg = _base("stage1", work, flux, steps, learning_rate, batch_size, size, seed, checkpoint_every)
        cfg["data"].update(real=_folder(real_folder, "real_folder", real_ratio > 0),
                           synthetic=_folder(synthetic_folder, "synthetic_folder", False),
                           meshes=_folder(meshes_folder, "meshes_folder", False), caption=caption,
                           real_ratio=real_ratio)
        if real_ratio < 1 and not (cfg["data"]["synthetic"] or cfg["data"]["meshes"]):
            raise InputError("synthetic_folder", "stage 1 needs synthetic samples: name a folder of renders or "
                                                 "of meshes (meshes_folder).")
        cfg["shifters"] = {"rank": rank, "variant": variant}
        result = _train(cfg, flux, steps, resume, "Train Domain Shifter")
        path = _install(result.outputs["shifters"], os.path.join(_model_root(SHIFTERS), name + ".safetensors"))
        _finish(result)
        shifters = load_shifters(path).to(flux.pipeline.transformer.x_embedder.weight.dtype)
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
            inputs=[FluxType.Input("model", tooltip="From Load Flux Model."),
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
                    *_common_inputs(1000, 1e-4)],
            outputs=[ControlType.Output(display_name="control"), io.Image.Output(display_name="loss_curve")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, shifter=None):
        return model_files_valid(SHIFTERS, {"shifter": shifter}, allowed=(NO_SHIFTER,))

    @classmethod
    def execute(cls, model, shifter, baseline, real_folder, synthetic_folder, meshes_folder, caption, real_ratio,
                control_map, tau_b, lora_rank, steps, learning_rate, batch_size, size, seed, output_name, resume,
                checkpoint_every) -> io.NodeOutput:
        from ..engine.lora_files import attach_lora

        flux = require_model(model)
        name = _output_name(output_name)
        work = _work_dir(name, "baseline" if baseline else "control")
        cfg = _base("stage2", work, flux, steps, learning_rate, batch_size, size, seed, checkpoint_every)
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
        result = _train(cfg, flux, steps, resume, "Train Control")
        root = _model_root(LORAS)
        control = _install(result.outputs["control_lora"], os.path.join(root, f"{name}_control.safetensors"))
        target = _install(result.outputs["target_lora"], os.path.join(root, f"{name}_target.safetensors"))
        _finish(result)
        transformer = flux.pipeline.transformer
        # the REALIZ3D_CONTROL layout of Load Control LoRA for the pack's own model (no side LoRAs)
        adapters = {"model": flux, "adapter": attach_lora(transformer, control, "control", "control"),
                    "target_adapter": attach_lora(transformer, target, "target", "target"), "side": None,
                    "hidden": 0}
        return io.NodeOutput(adapters, _curve(result.loss_curve))


class TrainRefAny3D(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}TrainRefAny3D", display_name="Train RefAny3D (Realiz3D)",
            category=f"{CATEGORY}/train",
            description="RefAny3D's dual-LoRA training (Reference-LoRA 'default', Domain-LoRA 'coord' and the "
                        "domain embedder) on triplets (image, mesh, pose). Saves models/refany3d/<output_name>/ "
                        "default.safetensors, coord.safetensors, domain_embedder.safetensors.",
            inputs=[FluxType.Input("model", tooltip="From Load Flux Model."),
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
                    *_common_inputs(1000, 1e-4)],
            outputs=[io.Image.Output(display_name="loss_curve")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, triplets_folder, views, condition_size, lora_rank, prompt_dropout, condition_dropout,
                steps, learning_rate, batch_size, size, seed, output_name, resume, checkpoint_every) -> io.NodeOutput:
        flux = require_model(model)
        name = _output_name(output_name)
        work = _work_dir(name, "refany3d")
        cfg = _base("refany3d", work, flux, steps, learning_rate, batch_size, size, seed, checkpoint_every)
        cfg["data"]["refany3d"] = _folder(triplets_folder, "triplets_folder", True)
        cfg["refany3d"] = {"n_views": views, "condition_size": condition_size, "prompt_dropout": prompt_dropout,
                           "condition_dropout": condition_dropout}
        cfg["lora"] = {"rank": lora_rank, "alpha": lora_rank}
        result = _train(cfg, flux, steps, resume, "Train RefAny3D")
        folder = os.path.join(_model_root(REFANY3D), name)
        for kind in ("default", "coord", "domain_embedder"):
            _install(result.outputs[kind], os.path.join(folder, f"{kind}.safetensors"))
        _finish(result)
        return io.NodeOutput(_curve(result.loss_curve))
