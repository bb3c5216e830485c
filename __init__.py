"""realiz3d-refany3d: photoreal, 3D-consistent generation (Realiz3D, RefAny3D) as ComfyUI nodes.

ComfyUI imports this file and calls :func:`comfy_entrypoint`; importing it has no other effect
(no ComfyUI import, no I/O), so the library below (``renderers``, ``adapters``, ...) stays
usable without a host.
"""

WEB_DIRECTORY = "./web"
__version__ = "0.1.0"


async def comfy_entrypoint():
    from .nodes.extension import Realiz3DExtension

    return Realiz3DExtension()
