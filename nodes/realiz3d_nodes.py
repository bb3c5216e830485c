"""Realiz3D inference nodes: Load Domain Shifter, Domain Schedule, Load Control LoRA,
Realiz3D Sample, Multiview Generate."""
from __future__ import annotations

from dataclasses import dataclass

import folder_paths
import torch
from comfy_api.latest import io

from ..adapters import PRESETS, load_shifters, make_schedule
from ..adapters.block_patches import ShiftPatches
from ..engine.layers import flux_layers
from ..engine.control_formats import CONVENTIONS, OMINICONTROL, describe_control_lora, read_file_metadata
from ..engine.lora_files import attach_lora, file_digest, read_lora, side_scales, strength_suffix
from ..engine.side_lora import SideLoRAs
from ..renderers.errors import InputError
from ..sampling.multiview import CONTROL_KINDS, LAYOUTS, generate_multiview
from ..sampling.realiz3d_sampler import ControlSet, Realiz3DSettings, sample_realiz3d
from . import native
from .common import (CATEGORY, PREFIX, CamerasType, ControlEntry, ControlType, ScheduleType, ShifterType,
                     ViewsType,
                     compile_input, conditioning_input, model_input, progress, vae_input)
from .flux_nodes import FluxModel
from .native_mesh import as_mesh, mesh_input
from .paths import model_files_valid, model_path, register_model_folder

SHIFTERS = "realiz3d_shifters"
NO_TARGET = "(none)"
FROM_LORA = "from the LoRA"




@dataclass(eq=False)
class GeneratedViews:
    """Views generated for a mesh, with the cameras they were generated from (for baking)."""
    views: torch.Tensor
    cameras: list
    mesh: object


def _sampling_inputs():
    return [
        io.Int.Input("steps", default=28, min=1, max=200, tooltip="FlowMatch Euler steps."),
        io.Float.Input("guidance", default=3.5, min=0.0, max=30.0, step=0.1, tooltip="Flux guidance embedding."),
        io.Int.Input("seed", default=0, min=0, max=2 ** 32 - 1, control_after_generate=True, tooltip="Noise seed."),
        ControlType.Input("control", optional=True, tooltip="Control LoRA from Load Control LoRA (applies to "
                                                            "the geometry-control branches only)."),
        ShifterType.Input("shifter", optional=True, tooltip="Domain shifters from Load Domain Shifter."),
        ScheduleType.Input("schedule", optional=True,
                           tooltip="Domain schedule (default with shifters: real everywhere)."),
    ]


def _layers(model, input_name: str = "model"):
    """The engine layers of a MODEL or of Load Flux Model's output (for layout checks)."""
    if isinstance(model, FluxModel):
        return flux_layers(model.pipeline.transformer)
    if not native.is_host_model(model):
        raise InputError(input_name, "expects a MODEL (Load Diffusion Model) or Load Flux Model's output.")
    return flux_layers(native.flux_module(model, input_name))


def _schedule(schedule, model, steps):
    if schedule is None:
        return None
    return make_schedule(num_blocks=_layers(model).num_blocks, num_steps=steps, **schedule)


def _control_entries(control, model) -> list:
    """The entries of a Load Control LoRA output (a list, stacked in order), checked against the model."""
    if control is None:
        return []
    entries = control if isinstance(control, list) else [control]
    own = isinstance(model, FluxModel)
    for e in entries:
        if own != (e.side is None) or (own and e.model is not model):
            raise InputError("control", "was loaded for another model; connect Load Control LoRA to the same model.")
        if not own and _layers(model).hidden != e.hidden:
            raise InputError("control", "was loaded for a model of another width; connect it to the same model.")
    return entries


def _control_args(control, model, control_images=None) -> dict:
    """Sampler keyword arguments for a Load Control LoRA output and Realiz3D Sample's
    control_images: one control set per LoRA (its own images, else control_images), the target
    adapters and, on a host's MODEL, the side LoRAs holding them."""
    entries = _control_entries(control, model)
    if not entries:
        return {} if control_images is None else {"control_sets": [ControlSet(control_images)]}
    sets = []
    for i, e in enumerate(entries):
        images = e.images if e.images is not None else control_images
        if images is None:
            raise InputError("control_images", f"the control LoRA '{e.info.describe()}' has no images: connect "
                                               "control_images here, or images on its Load Control LoRA.")
        sets.append(ControlSet(images, (e.adapter,), e.info.condition_latents, e.info.independent, f"control{i}"))
    return {"control_sets": sets, **_side_args(entries)}


def _side_args(entries) -> dict:
    side = None
    for e in entries:
        if e.side is not None:
            side = e.side if side is None else side.merge(e.side)
    targets = tuple(e.target_adapter for e in entries if e.target_adapter)
    return {"side": side, **({"target_adapters": targets} if targets else {})}


def _mesh_controls(control, model, default_map: str) -> dict:
    """Multiview Generate's keyword arguments: per control LoRA, the mesh control map it takes
    (its own choice, the one its OminiControl task needs, else the node's ``control_map``)."""
    entries = _control_entries(control, model)
    if not entries:
        return {"control_sets": [(default_map, (), "mean", False)]}
    sets = []
    for e in entries:
        kind = e.control_map or e.info.control_map
        if kind is None and e.info.convention == OMINICONTROL and e.info.task:
            raise InputError("control", f"the {e.info.describe()} needs {e.info.task} images, which a mesh render "
                                        "does not give; use Realiz3D Sample with your own control images.")
        sets.append((kind or default_map, (e.adapter,), e.info.condition_latents, e.info.independent))
    return {"control_sets": sets, **_side_args(entries)}


class LoadDomainShifter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        register_model_folder(SHIFTERS)
        files = folder_paths.get_filename_list(SHIFTERS) or [""]
        return io.Schema(
            node_id=f"{PREFIX}LoadDomainShifter", display_name="Load Domain Shifter (Realiz3D)",
            category=f"{CATEGORY}/model",
            description="Realiz3D domain shifters (one per DiT block) from models/realiz3d_shifters.",
            inputs=[model_input("The Flux model the shifters were trained for (MODEL or Load Flux Model)."),
                    io.Combo.Input("shifter", options=files, default=files[0],
                                   tooltip="A .safetensors shifter file written by Train Domain Shifter.")],
            outputs=[ShifterType.Output(display_name="shifter")])

    @classmethod
    def validate_inputs(cls, shifter=None):
        return model_files_valid(SHIFTERS, {"shifter": shifter})

    @classmethod
    def execute(cls, model, shifter) -> io.NodeOutput:
        shifters = load_shifters(model_path(SHIFTERS, shifter, "shifter"))
        layers = _layers(model)
        shifters.check_fits(layers)
        # the pack's own model computes in its weights' dtype; a host's model casts per layer and
        # the shift is cast to the activations' dtype where it is added
        return io.NodeOutput(shifters.to(layers.dtype) if isinstance(model, FluxModel) else shifters)


class DomainScheduleNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}DomainSchedule", display_name="Domain Schedule (Realiz3D)",
            category=f"{CATEGORY}/sample",
            description="Which domain (synthetic render or real photo) each DiT block uses at each step.",
            inputs=[io.Combo.Input("preset", options=list(PRESETS), default="layer-aware",
                                   tooltip="real / synthetic everywhere; layer-aware: synthetic in the first "
                                           "k_layers blocks; step-switch: synthetic before switch_fraction of the "
                                           "steps; custom: grid_json."),
                    io.Int.Input("k_layers", default=8, min=0, max=128,
                                 tooltip="layer-aware: blocks (double first, then single) kept synthetic."),
                    io.Float.Input("switch_fraction", default=0.3, min=0.0, max=1.0, step=0.05,
                                   tooltip="step-switch: share of the steps run synthetic."),
                    io.String.Input("grid_json", default="", multiline=True,
                                    tooltip='custom: ["synthetic", "real", ...] with one entry per block, or a '
                                            'list of such lists, one per step.')],
            outputs=[ScheduleType.Output(display_name="schedule")])

    @classmethod
    def execute(cls, preset, k_layers, switch_fraction, grid_json) -> io.NodeOutput:
        params = dict(preset=preset, k_layers=k_layers, switch_fraction=switch_fraction, grid_json=grid_json)
        make_schedule(**params)         # syntax checked now; blocks and steps when sampling
        return io.NodeOutput(params)


class ApplyDomainShifter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}ApplyDomainShifter", display_name="Apply Domain Shifter (Realiz3D)",
            category=f"{CATEGORY}/model",
            description="Realiz3D's domain shifters on a MODEL for ComfyUI's own samplers (KSampler, "
                        "SamplerCustomAdvanced): text-to-image in the real or synthetic domain, or under a domain "
                        "schedule. The input MODEL is not changed; the output is a patched copy sharing its "
                        "weights. For geometry controls use Realiz3D Sample.",
            inputs=[io.Model.Input("model", tooltip="A FLUX.1 MODEL (Load Diffusion Model, Load Checkpoint)."),
                    ShifterType.Input("shifter", tooltip="From Load Domain Shifter (trained for this model)."),
                    ScheduleType.Input("schedule", optional=True,
                                       tooltip="Domain Schedule; without one, the real domain everywhere.")],
            outputs=[io.Model.Output(display_name="model")])

    @classmethod
    def execute(cls, model, shifter, schedule=None) -> io.NodeOutput:
        shifter.check_fits(_layers(model))
        if schedule is not None:
            make_schedule(num_blocks=shifter.cfg.num_blocks, **schedule)       # k_layers, grid widths now
        patched = model.clone()
        for (kind, index), patch in ShiftPatches(shifter, schedule).patches().items():
            patched.set_model_patch_replace(patch, "dit", kind, index)
        return io.NodeOutput(patched)


class LoadControlLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = folder_paths.get_filename_list("loras") or [""]
        return io.Schema(
            node_id=f"{PREFIX}LoadControlLoRA", display_name="Load Control LoRA (Realiz3D)",
            category=f"{CATEGORY}/model",
            description="A control LoRA (diffusers layout) from models/loras, applied only to its control "
                        "branches: a Realiz3D control LoRA trained by this pack (with its target LoRA, applied only "
                        "to the image being generated) or a published OminiControl spatial LoRA (depth.safetensors, "
                        "canny.safetensors), recognised from its keys and named by its file. Chain several (depth + "
                        "canny) through 'control'. The base model is unchanged for other nodes.",
            inputs=[model_input("The Flux model the LoRA was trained for (MODEL or Load Flux Model)."),
                    io.Combo.Input("lora", options=files, default=files[0], tooltip="Control LoRA file."),
                    io.Combo.Input("target_lora", options=[NO_TARGET] + files, default=NO_TARGET, optional=True,
                                   tooltip="Stage 2's target LoRA (NAME_target.safetensors from Train Control), "
                                           "or none (OminiControl: none; the target runs the base weights)."),
                    io.Float.Input("strength", default=1.0, min=-4.0, max=4.0, step=0.05, optional=True,
                                   tooltip="Factor on the LoRA's effect; 1 is how it was trained."),
                    io.Combo.Input("convention", options=list(CONVENTIONS), default=CONVENTIONS[0], optional=True,
                                   tooltip="auto: OminiControl for a file in its layout named after its task "
                                           "(depth, canny, coloring, deblurring), Realiz3D for the pack's own. "
                                           "OminiControl: conditions are VAE posterior samples, several "
                                           "conditions do not see each other, scale exactly 1."),
                    io.Combo.Input("control_map", options=[FROM_LORA] + list(CONTROL_KINDS), default=FROM_LORA,
                                   optional=True,
                                   tooltip="The mesh control map this LoRA takes in Multiview Generate / texturing: "
                                           "from the LoRA (OminiControl depth -> depth (inverse), canny -> canny; "
                                           "Realiz3D -> the sampler's control_map), or a fixed one."),
                    io.Image.Input("images", optional=True,
                                   tooltip="This LoRA's control images for Realiz3D Sample (else its "
                                           "control_images)."),
                    ControlType.Input("control", optional=True,
                                      tooltip="Controls loaded before, to use together with this one.")],
            outputs=[ControlType.Output(display_name="control"),
                     io.String.Output(display_name="info", tooltip="What the file was recognised as.")])

    @classmethod
    def validate_inputs(cls, lora=None, target_lora=None, convention=None, control_map=None):
        if convention is not None and convention not in CONVENTIONS:
            return f"convention: must be one of {list(CONVENTIONS)} (got {convention!r})."
        if control_map is not None and control_map not in (FROM_LORA, *CONTROL_KINDS):
            return f"control_map: must be one of {[FROM_LORA, *CONTROL_KINDS]} (got {control_map!r})."
        return model_files_valid("loras", {"lora": lora, "target_lora": target_lora}, allowed=(NO_TARGET,))

    @classmethod
    def execute(cls, model, lora, target_lora=NO_TARGET, strength=1.0, convention="auto", control_map=FROM_LORA,
                images=None, control=None) -> io.NodeOutput:
        before = _control_entries(control, model)
        path = model_path("loras", lora, "lora")
        state = read_lora(path, "lora")
        info = describe_control_lora(state, lora, read_file_metadata(path), convention)
        unit = info.convention == OMINICONTROL
        files = [(lora, "lora", "control", path, state)]
        if target_lora and target_lora != NO_TARGET:
            t_path = model_path("loras", target_lora, "target_lora")
            files.append((target_lora, "target_lora", "target", t_path, None))
        if isinstance(model, FluxModel):
            # OminiControl's scale-1 rule is the control file's; a target LoRA keeps its own alpha
            names = [attach_lora(model.pipeline.transformer, p, logical, k, strength, unit and logical == "control")
                     for _, k, logical, p, _ in files]
            side, hidden = None, 0
        else:           # a host's MODEL: the LoRAs stay beside it, never merged into the shared weights
            layers, side, names = _layers(model), SideLoRAs(), []
            for f, k, logical, p, st in files:
                st = st if st is not None else read_lora(p, k)
                u = unit and logical == "control"
                name = f"{logical}_{file_digest(p)}{strength_suffix(strength, u)}"
                side.add(name, st, layers.module_of, layers.hidden, k, f, scale=side_scales(st, strength, u))
                names.append(name)
            hidden = layers.hidden
        entry = ControlEntry(model, names[0], names[1] if len(names) > 1 else None, side, hidden, info, images,
                             None if control_map == FROM_LORA else control_map)
        text = f"{lora}: {info.describe()}" + (f"; takes {entry.control_map or info.control_map} control maps"
                                                  if entry.control_map or info.control_map else "")
        return io.NodeOutput(before + [entry], "\n".join([*(f"{e.info.describe()}" for e in before), text]))


class Realiz3DSample(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}Sample", display_name="Realiz3D Sample (Realiz3D)",
            category=f"{CATEGORY}/sample",
            description="Text-to-image under aligned geometry controls, with domain shifters and a schedule.",
            inputs=[model_input(), conditioning_input(), vae_input(),
                    io.Image.Input("control_images", optional=True,
                                   tooltip="Geometry maps (normal, point map, depth) of the output's size."),
                    io.Int.Input("width", default=512, min=16, max=4096, step=16, tooltip="Output width."),
                    io.Int.Input("height", default=512, min=16, max=4096, step=16, tooltip="Output height."),
                    io.Int.Input("batch", default=1, min=1, max=16, tooltip="Images per prompt."),
                    *_sampling_inputs(), compile_input()],
            outputs=[io.Image.Output(display_name="image")])

    @classmethod
    def execute(cls, model, positive, vae, width, height, batch, steps, guidance, seed, control_images=None,
                control=None, shifter=None, schedule=None, compile=False) -> io.NodeOutput:
        s = Realiz3DSettings(steps=steps, guidance=guidance, width=width, height=height, batch=batch, seed=seed)
        image = sample_realiz3d(native.runtime(model, vae), native.text_conditioning(positive), None, s,
                                shifters=shifter, schedule=_schedule(schedule, model, steps),
                                progress=progress(steps), compile=compile,
                                **_control_args(control, model, control_images))
        return io.NodeOutput(image)


class MultiviewGenerate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}MultiviewGenerate", display_name="Multiview Generate (Realiz3D)",
            category=f"{CATEGORY}/sample",
            description="Views of a mesh generated under its geometry maps (one control LoRA or several: "
                        "Realiz3D's, OminiControl's depth / canny), jointly as one grid image or one view at a time "
                        "with a shared seed; the views keep their cameras (for Bake Texture).",
            inputs=[model_input(), conditioning_input(), vae_input(),
                    mesh_input("From Load Mesh (normalised), or a native MESH (its first item; Load Mesh picks "
                               "another and normalises it)."),
                    CamerasType.Input("cameras", tooltip="From Camera Rig: one view per camera."),
                    io.Combo.Input("control_map", options=list(CONTROL_KINDS), default="normal",
                                   tooltip="Geometry map used as control: camera-frame normals, point map, depth; "
                                           "depth (inverse) and canny as OminiControl's LoRAs take them. A control "
                                           "LoRA whose task or control_map says otherwise uses its own."),
                    io.Int.Input("view_size", default=256, min=16, max=2048, step=16,
                                 tooltip="Size of each view in pixels (multiple of 16)."),
                    io.Int.Input("columns", default=2, min=1, max=8, tooltip="Views per grid row."),
                    *_sampling_inputs(), compile_input(),
                    io.Combo.Input("layout", options=list(LAYOUTS), default=LAYOUTS[0], optional=True,
                                   tooltip="grid: all views as one image (they share attention: consistent); "
                                           "per view: each view alone at view_size with the same seed (the size "
                                           "OminiControl's 512 px LoRAs were trained at; views less alike).")],
            outputs=[io.Image.Output(display_name="views"), ViewsType.Output(display_name="generated")])

    @classmethod
    def validate_inputs(cls, layout=None):
        if layout is not None and layout not in LAYOUTS:
            return f"layout: must be one of {list(LAYOUTS)} (got {layout!r})."
        return True

    @classmethod
    def execute(cls, model, positive, vae, mesh, cameras, control_map, view_size, columns, steps, guidance, seed,
                control=None, shifter=None, schedule=None, compile=False, layout="grid") -> io.NodeOutput:
        s = Realiz3DSettings(steps=steps, guidance=guidance, seed=seed)
        mesh = as_mesh(mesh)
        total = steps * (len(cameras) if layout == "per view" else 1)
        views, _ = generate_multiview(native.runtime(model, vae), mesh, cameras, native.text_conditioning(positive),
                                      s, view_size, columns, control_map, shifters=shifter,
                                      schedule=_schedule(schedule, model, steps), progress=progress(total),
                                      compile=compile, layout=layout, **_mesh_controls(control, model, control_map))
        return io.NodeOutput(views, GeneratedViews(views, list(cameras), mesh))
