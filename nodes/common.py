"""Types and helpers shared by the pack's nodes."""
from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management
import comfy.utils
from comfy_api.latest import io

PREFIX = "Realiz3D"
CATEGORY = "Realiz3D"

#: The pack's own socket types: the library objects travel between nodes unchanged.
MeshType = io.Custom("REALIZ3D_MESH")          # renderers.Mesh
CamerasType = io.Custom("REALIZ3D_CAMERAS")    # list[renderers.Camera]
RenderType = io.Custom("REALIZ3D_RENDER")      # renderers.RenderBundle
FluxType = io.Custom("REALIZ3D_FLUX")          # nodes.flux_nodes.FluxModel
FluxClipType = io.Custom("REALIZ3D_FLUX_CLIP")  # nodes.flux_nodes.FluxModel (its text encoders)
FluxVaeType = io.Custom("REALIZ3D_FLUX_VAE")    # nodes.flux_nodes.FluxModel (its VAE)
RefAny3DType = io.Custom("REALIZ3D_REFANY3D")  # nodes.refany3d_nodes.RefAny3DModel
#: list of dict(xyz float32 [P, 3], rgb uint8 [P, 3]), one per image (a bare dict: one cloud)
PointCloudType = io.Custom("REALIZ3D_POINTCLOUD")
ShifterType = io.Custom("REALIZ3D_SHIFTER")    # adapters.DomainShifters
ScheduleType = io.Custom("REALIZ3D_SCHEDULE")  # dict of make_schedule parameters
ControlType = io.Custom("REALIZ3D_CONTROL")    # [ControlEntry]: control LoRAs attached to a model, in order
ViewsType = io.Custom("REALIZ3D_VIEWS")        # nodes.realiz3d_nodes.GeneratedViews


@dataclass(eq=False)
class ControlEntry:
    """One control LoRA as Load Control LoRA attached it: its adapter names (on the pack's model,
    peft adapters; on a host's MODEL, names in ``side``), what the file is (an
    engine.control_formats.ControlLoRAInfo), its own images (or None) and the mesh control map
    it takes (a CONTROL_KINDS name, or None: the sampler node's choice)."""
    model: object
    adapter: str
    target_adapter: object
    side: object
    hidden: int
    info: object
    images: object = None
    control_map: object = None


def model_input(tooltip: str = "", optional: bool = False):
    """A Flux model socket: ComfyUI's MODEL (Load Diffusion Model, Load Checkpoint, any dtype) or
    the pack's Load Flux Model output (diffusers folders and tiny test models)."""
    return io.MultiType.Input("model", types=[io.Model, FluxType], optional=optional, tooltip=tooltip or (
        "A FLUX.1 model: MODEL from Load Diffusion Model / Load Checkpoint (fp8 stays fp8), or Load Flux Model "
        "(Realiz3D)."))


def vae_input():
    return io.MultiType.Input("vae", types=[io.Vae, FluxVaeType],
                              tooltip="Flux's VAE (Load VAE with ae.safetensors, or Load Flux Model's vae): encodes "
                                      "the condition images and decodes the result.")


def conditioning_input():
    return io.Conditioning.Input("positive", tooltip="The prompt from CLIP Text Encode (Flux's DualCLIPLoader) or "
                                                     "Text Encode (Realiz3D); a FluxGuidance value on it overrides "
                                                     "the guidance widget.")


def compile_input():
    """The samplers' switch for torch.compile of the engine's blocks (optional: older workflows
    validate)."""
    return io.Boolean.Input("compile", default=False, optional=True,
                            tooltip="torch.compile the transformer blocks for this layout: the first step compiles "
                                    "(minutes at FLUX size), later steps and prompts of the same size run faster "
                                    "on a GPU. Off: the eager engine.")


def check_cancel() -> None:
    """Raise ComfyUI's interrupt if the user cancelled the prompt."""
    comfy.model_management.throw_exception_if_processing_interrupted()


def progress(total: int):
    """A library progress callback driving ComfyUI's progress bar; each call is a cancel point."""
    bar = comfy.utils.ProgressBar(total)

    def update(done: int, total_: int) -> None:
        bar.update_absolute(done, total_)
        check_cancel()

    check_cancel()
    return update


def output_file(filename_prefix: str, extension: str, example: str) -> tuple[str, str, str]:
    """(absolute path, file name, subfolder) of the next numbered file for ``filename_prefix``
    under ComfyUI's output folder; InputError('filename_prefix') when the name would leave it
    (absolute, '..', or a link out of the folder), holds a NUL or control character (newline,
    tab, ...), or is too long for the file system (a name part or the whole path)."""
    import os

    import folder_paths

    from ..renderers.errors import InputError
    from .paths import check_name_chars, check_name_length

    out_dir = folder_paths.get_output_directory()
    if filename_prefix:
        check_name_chars(filename_prefix, "filename_prefix")
    shown = filename_prefix if len(filename_prefix or "") <= 80 else filename_prefix[:77] + "..."
    message = (f"'{shown}' leaves ComfyUI's output folder; use a relative name such as '{example}'.")
    parts = (filename_prefix or "").replace("\\", "/").split("/")
    if not filename_prefix or os.path.isabs(filename_prefix) or ".." in parts:
        raise InputError("filename_prefix", message)
    # '_<counter>_.<ext>' after the name: 5 digits at least, 7 leaves room for a long-used prefix
    check_name_length(out_dir, filename_prefix, "filename_prefix", reserve=len(f"_{0:07}_.{extension}"))
    try:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
    except Exception as exc:
        raise InputError("filename_prefix", message) from exc
    real_out = os.path.realpath(out_dir)
    if os.path.commonpath([os.path.realpath(folder), real_out]) != real_out:
        raise InputError("filename_prefix", message)
    os.makedirs(folder, exist_ok=True)
    filename = f"{name}_{counter:05}_.{extension}"
    return os.path.join(folder, filename), filename, subfolder
