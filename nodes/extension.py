"""The pack's ComfyExtension: every node module is imported on its own, so a module whose
optional dependency is missing disables its nodes, never the pack."""
from __future__ import annotations

import importlib
import logging

from comfy_api.latest import ComfyExtension, io

log = logging.getLogger(__name__)

#: module -> node class names
NODE_MODULES = {
    "mesh_nodes": ["LoadMesh"],
    "batch_nodes": ["LoadMeshFolder"],
    "camera_nodes": ["CameraRig"],
    "render_nodes": ["RenderViews", "SavePointCloud"],
    "control_nodes": ["GeometryControls"],
    "flux_nodes": ["LoadFluxModel", "FluxTextEncode"],
    "refany3d_nodes": ["LoadRefAny3D", "RefAny3DSample"],
    "realiz3d_nodes": ["LoadDomainShifter", "DomainScheduleNode", "ApplyDomainShifter", "LoadControlLoRA",
                       "Realiz3DSample", "MultiviewGenerate"],
    "texture_nodes": ["BakeTexture", "SaveTexturedMesh"],
    "training_nodes": ["TrainDomainShifter", "TrainControl", "TrainRefAny3D"],
}


class Realiz3DExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        nodes = []
        for module_name, classes in NODE_MODULES.items():
            try:
                module = importlib.import_module(f".{module_name}", __package__)
            except Exception as exc:  # an optional dependency is missing or broken
                log.warning("Realiz3D: nodes %s disabled: %s", ", ".join(classes), exc)
                continue
            nodes += [getattr(module, c) for c in classes]
        return nodes
