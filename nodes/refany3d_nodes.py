"""Load RefAny3D and RefAny3D Sample."""
from __future__ import annotations

from dataclasses import dataclass

import folder_paths
import numpy as np
import torch
from comfy_api.latest import io

from ..refany3d import RefAny3DSettings, attach_refany3d, point_clouds, sample, xyz_maps
from ..refany3d.conditions import condition_views
from ..renderers.errors import InputError
from . import native
from .common import (CATEGORY, PREFIX, PointCloudType, RefAny3DType, RenderType, check_cancel,
                     compile_input, conditioning_input, model_input, progress, vae_input)
from .flux_nodes import FluxModel
from .native_mesh import as_mesh, mesh_input
from .paths import model_files_valid, model_path, register_model_folder

FOLDER = "refany3d"


@dataclass(eq=False)
class RefAny3DModel:
    """The model (a MODEL or Load Flux Model's output) and RefAny3D's weights attached for it."""
    model: object
    weights: object


def _pick(files, preferred):
    return preferred if preferred in files else (files[0] if files else "")


class LoadRefAny3D(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        register_model_folder(FOLDER)
        files = folder_paths.get_filename_list(FOLDER)
        options = files or [""]
        return io.Schema(
            node_id=f"{PREFIX}LoadRefAny3D",
            display_name="Load RefAny3D (Realiz3D)",
            category=f"{CATEGORY}/RefAny3D",
            description="Attaches RefAny3D's published weights to a FLUX.1-dev model. The model stays "
                        "unchanged for every other node: the LoRAs apply beside it, only to RefAny3D's branches.",
            inputs=[
                model_input("FLUX.1-dev: MODEL from Load Diffusion Model (fp8 stays fp8), or Load Flux Model."),
                io.Combo.Input("reference_lora", options=options, default=_pick(files, "default.safetensors"),
                               tooltip="Reference-LoRA (default.safetensors) in models/refany3d."),
                io.Combo.Input("domain_lora", options=options, default=_pick(files, "coord.safetensors"),
                               tooltip="Domain-LoRA (coord.safetensors) in models/refany3d."),
                io.Combo.Input("domain_embedder", options=options, default=_pick(files, "domain_embedder.pth"),
                               tooltip="domain_embedder.pth (read with weights_only) or its .safetensors "
                                       "conversion, in models/refany3d."),
            ],
            outputs=[RefAny3DType.Output(display_name="refany3d")],
        )

    @classmethod
    def validate_inputs(cls, reference_lora=None, domain_lora=None, domain_embedder=None):
        return model_files_valid(FOLDER, {"reference_lora": reference_lora, "domain_lora": domain_lora,
                                          "domain_embedder": domain_embedder})

    @classmethod
    def execute(cls, model, reference_lora, domain_lora, domain_embedder) -> io.NodeOutput:
        paths = [model_path(FOLDER, n, k) for n, k in ((reference_lora, "reference_lora"),
                                                       (domain_lora, "domain_lora"),
                                                       (domain_embedder, "domain_embedder"))]
        target = model.pipeline.transformer if isinstance(model, FluxModel) else native.flux_module(model)
        return io.NodeOutput(RefAny3DModel(model, attach_refany3d(target, *paths)))


class RefAny3DSample(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{PREFIX}RefAny3DSample",
            display_name="RefAny3D Sample (Realiz3D)",
            category=f"{CATEGORY}/RefAny3D",
            description="Generates an image of the 3D asset and its point map from a prompt, and the point map "
                        "decoded to XYZ (point clouds, float map, mask). Conditions are rendered from the "
                        "normalised mesh with RefAny3D's cameras, or given as pre-rendered views (with their "
                        "render for the asset's true bounds).",
            inputs=[
                RefAny3DType.Input("refany3d", tooltip="From Load RefAny3D (the model travels with it)."),
                conditioning_input(),
                vae_input(),
                mesh_input("Reference mesh from Load Mesh, or a native MESH (its first item). Its conditions are "
                           "always rendered from the normalised mesh, as RefAny3D does, whatever Load Mesh's "
                           "normalize says; the point map decodes into the mesh file's own frame. Wins over the "
                           "view inputs.", optional=True),
                io.Image.Input("rgb_views", optional=True,
                               tooltip="Pre-rendered unlit RGB views [V, S, S, 3] on white (instead of mesh). "
                                       "Without a render the point map decodes into the [-1, 1] cube, which "
                                       "stretches a non-cubic asset: connect its render too."),
                io.Image.Input("point_views", optional=True,
                               tooltip="Pre-rendered per-axis point maps matching rgb_views (instead of mesh). "
                                       "Without a render the point map decodes into the [-1, 1] cube."),
                io.Int.Input("views", default=8, min=1, max=60,
                             tooltip="Number of condition views rendered from the mesh (the weights use 8)."),
                io.Int.Input("condition_size", default=512, min=16, max=2048, step=16,
                             tooltip="Size of the rendered condition views in pixels (the weights use 512)."),
                io.Int.Input("width", default=512, min=16, max=4096, step=16, tooltip="Output width (multiple of 16)."),
                io.Int.Input("height", default=512, min=16, max=4096, step=16, tooltip="Output height (multiple of 16)."),
                io.Int.Input("steps", default=28, min=1, max=200, tooltip="FlowMatch Euler steps."),
                io.Float.Input("guidance", default=3.5, min=0.0, max=30.0, step=0.1,
                               tooltip="Flux guidance embedding."),
                io.Float.Input("image_cfg", default=2.0, min=1.0, max=10.0, step=0.1,
                               tooltip="Image guidance between the conditioned pass and a pass with black "
                                       "conditions (1 = off, half the cost)."),
                io.Int.Input("seed", default=0, min=0, max=2 ** 32 - 1, control_after_generate=True,
                             tooltip="Seed of the noise and of the condition latents."),
                io.Int.Input("batch", default=1, min=1, max=16, tooltip="Images per prompt."),
                io.Combo.Input("condition_latents", options=["mean", "sample"], default="mean",
                               tooltip="mean: the VAE posterior's mean (what ComfyUI's VAE gives). sample: a seeded "
                                       "draw from the posterior, as the reference code does (Load Flux Model's "
                                       "vae only; ComfyUI's VAE encodes deterministically)."),
                io.Boolean.Input("kv_cache", default=False,
                                 tooltip="Compute the conditions' keys and values once (faster later steps). "
                                         "An APPROXIMATION for these weights: the conditions then stop attending "
                                         "to the targets, unlike in training. Memory: the cached keys and values "
                                         "of every block, in the compute dtype, freed when the prompt ends: with "
                                         "FLUX.1 at 8 views of 512 px in bf16, 10.7 GiB per image in the batch, "
                                         "twice that with image_cfg above 1 (one cache per pass)."),
                io.Float.Input("background_threshold", default=0.95, min=0.5, max=1.0, step=0.01,
                               tooltip="Point-map pixels brighter than this in every channel are background "
                                       "(white), unless they connect to the object without passing through "
                                       "white (above 0.99): those are its surface near the bounding box's max "
                                       "corner. 0.99 or more: a plain threshold."),
                RenderType.Input("render", optional=True,
                                 tooltip="Render Views' bundle of the asset the views show: its asset bounds decode "
                                         "the point map (true proportions), and it supplies the views not connected "
                                         "(its unlit albedo; its point maps). For the reference's colours render "
                                         "with albedo 'reference' and the refany3d cameras."),
                compile_input(),
            ],
            outputs=[io.Image.Output(display_name="image"), io.Image.Output(display_name="point_map"),
                     PointCloudType.Output(display_name="point_cloud",
                                           tooltip="One point cloud per image: the foreground of its point map in "
                                                   "the asset frame, coloured by the image."),
                     io.Image.Output(display_name="xyz",
                                     tooltip="Raw XYZ float map [B, H, W, 3] in the asset frame (mesh-file units, "
                                             "not clipped to [0, 1]; 0 on background): data, not an image to view."),
                     io.Mask.Output(display_name="foreground",
                                    tooltip="1 where the point map shows the object (the pixels of the point cloud).")],
        )

    @classmethod
    def execute(cls, refany3d, positive, vae, views, condition_size, width, height, steps, guidance, image_cfg, seed,
                batch, condition_latents, kv_cache, background_threshold, mesh=None, rgb_views=None,
                point_views=None, render=None, compile=False) -> io.NodeOutput:
        if not isinstance(refany3d, RefAny3DModel):
            raise InputError("refany3d", "expects the output of Load RefAny3D (Realiz3D).")
        check_cancel()
        if mesh is not None and (condition_size < 16 or condition_size % 16):
            raise InputError("condition_size", f"must be a positive multiple of 16 (got {condition_size}): the mesh "
                                               "is rendered at this size and Flux packs 2x2 latent patches of an "
                                               "8x downsampled image. Use 512 (the reference) or another multiple "
                                               "of 16.")
        mesh = as_mesh(mesh) if mesh is not None else None
        # without a mesh or a render the point map decodes into the [-1, 1] cube (see the tooltips)
        rgb, pts, bounds = condition_views(mesh, rgb_views, point_views, render, views, condition_size)
        settings = RefAny3DSettings(steps=steps, guidance=guidance, image_cfg=image_cfg, width=width, height=height,
                                    batch=batch, seed=seed, condition_latents=condition_latents, kv_cache=kv_cache)
        runtime = native.runtime(refany3d.model, vae)
        image, point_map = sample(runtime, refany3d.weights, native.text_conditioning(positive), rgb, pts, settings,
                                  progress(steps), compile=compile)
        xyz, fg = xyz_maps(point_map.numpy(), bounds, background_threshold)
        return io.NodeOutput(image, point_map, point_clouds(image.numpy(), xyz, fg), torch.from_numpy(xyz),
                             torch.from_numpy(fg.astype(np.float32)))
