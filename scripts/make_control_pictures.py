"""The README's picture of the geometry controls: docs/controls.jpg, the bundled sample mesh from
4 orbit views, one row per control (camera-frame normals, inverse depth for OminiControl's
depth LoRA, canny edges of the normal render and, as 'auto' adds for a textured mesh, of the RGB
too, for its canny LoRA), each row labelled.

Usage: `.cache/host/venv/bin/python scripts/make_control_pictures.py [OUT]` (default docs/controls.jpg).
"""
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pack_import import ROOT, import_pack  # noqa: E402

#: pixels per view, views, label strip height, JPEG quality (the sheet stays well under 200 KB)
VIEW, VIEWS, LABEL, QUALITY = 192, 4, 18, 88
ROWS = (("normal", "normal (camera frame)"), ("depth (inverse)", "depth (inverse): depth.safetensors"),
        ("canny normal", "canny (normal): canny.safetensors"),
        ("canny", "canny (auto = normal + RGB edges, the mesh is textured): canny.safetensors"))


def main(out: str) -> None:
    import_pack("realiz3d")
    import torch

    from realiz3d.renderers import load_mesh, normalize, orbit_rig, render_views
    from realiz3d.renderers.controls import canny_control
    from realiz3d.sampling.multiview import control_maps, make_grid

    mesh = normalize(load_mesh(os.path.join(ROOT, "assets", "sample_mesh.glb")))
    bundle = render_views(mesh, orbit_rig(VIEWS, elevation_deg=25.0, start_azimuth_deg=30.0), VIEW, VIEW,
                          backend="raycast", lit=False)
    strips = []
    for kind, label in ROWS:
        if kind == "canny normal":
            maps = torch.from_numpy(canny_control(bundle, "normal"))
        else:
            maps = control_maps(bundle, kind)
        row = make_grid(maps, VIEWS).numpy()
        strip = Image.new("RGB", (row.shape[1], LABEL), (32, 32, 32))
        ImageDraw.Draw(strip).text((6, 3), label, fill=(235, 235, 235))
        strips += [np.asarray(strip), np.round(row * 255).astype(np.uint8)]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Image.fromarray(np.concatenate(strips)).save(out, quality=QUALITY)
    print(f"{out}: {os.path.getsize(out) // 1024} KB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "docs", "controls.jpg"))
