"""ComfyUI's native 3D types both ways inside a real host: a generator-style MESH (uvs, texture,
vertex colours, a zero-padded batch of two) into Load Mesh and Render Views; Bake Texture's MESH
into core's Save 3D Model (the GLB holds the baked texture); the 3D viewer's camera into Camera Rig
(the framing of core's Render Mesh with the same camera). On 0.3.75 the MESH is geometry only:
the 0.33 parts skip and the geometry path runs."""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from comfy_host import comfy_dir, error_message
from realiz3d.renderers import normalize, render_views
from realiz3d.renderers.cameras import camera_from_viewer
from realiz3d.renderers.mesh_io import mesh_from_native


def host_mesh_has_texture() -> bool:
    path = os.path.join(comfy_dir(), "comfy_api", "latest", "_util", "geometry_types.py")
    return os.path.isfile(path) and "vertex_counts" in open(path).read()


RICH = host_mesh_has_texture()
ONLY_033 = pytest.mark.skipif(not RICH, reason="this host's MESH is vertices + faces only (uvs, texture, colours "
                                               "and padded batches came with ComfyUI 0.33)")


def png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def quad_and_box():
    """Item 0: a quad x, y in [1, 3] at z = 0.5 (off the origin, where padding zeros sit), UVs in
    glTF's convention on a texture red above / blue below, linear vertex colours (1, 1, 0.25).
    Item 1: a box with linear vertex colour green 0.5 ** 2.2 on a white texture. Zero-padded to the
    box's size."""
    quad = [[1, 1, 0.5], [3, 1, 0.5], [3, 3, 0.5], [1, 3, 0.5]]
    box = [[x, y, z] for x in (-0.5, 0.5) for y in (-0.4, 0.4) for z in (-0.3, 0.3)]
    box_faces = [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],
                 [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
    vertices = [quad + [[0, 0, 0]] * 4, box]
    faces = [[[0, 1, 2], [0, 2, 3]] + [[0, 0, 0]] * 10, box_faces]
    texture = np.zeros((2, 8, 8, 3))
    texture[0, :4, :, 0] = 1.0
    texture[0, 4:, :, 2] = 1.0
    texture[1] = 1.0                           # the box's own texture: white, its colour is the vertices
    uvs = [[[0, 1], [1, 1], [1, 0], [0, 0]] + [[0, 0]] * 4, [[0.5, 0.5]] * 8]
    colors = [[[1, 1, 0.25]] * 4 + [[0, 0, 0]] * 4, [[0, 0.5 ** 2.2, 0]] * 8]
    return dict(vertices=vertices, faces=faces, uvs=uvs, vertex_colors=colors, texture=texture.tolist(),
                vertex_counts=[4, 8], face_counts=[2, 12])


FRONT = json.dumps([{"eye": [0, 0, 4], "projection": "orthographic", "ortho_height": 2.0}])


def rig(poses=FRONT):
    return {"class_type": "Realiz3DCameraRig", "inputs": {"preset": "explicit poses", "num_views": 1,
            "elevation": 0.0, "radius": 4.0, "fov": 45.0, "start_azimuth": 0.0, "projection": "perspective",
            "ortho_height": 2.4, "poses_json": poses}}


def render(mesh, cameras, size=32, **extra):
    return {"class_type": "Realiz3DRenderViews", "inputs": {"mesh": mesh, "cameras": cameras, "width": size,
            "height": size, "rgb": "unlit albedo", "ambient": 0.3, "normal_frame": "world", "smooth_normals": True,
            "background": 0.0, "backend": "raycast", **extra}}


def save(images, prefix):
    return {"class_type": "SaveImage", "inputs": {"images": images, "filename_prefix": prefix}}


def outputs(server, history, prefix):
    folder, name = os.path.split(prefix)
    return sorted(p for p in server.output_files(history)
                  if os.path.basename(p).startswith(name + "_") and os.path.basename(os.path.dirname(p)) == folder)


@ONLY_033
def test_generator_mesh_colours_texture_and_padding(server):
    prompt = {
        "1": {"class_type": "Realiz3DTestNativeMesh", "inputs": {"spec_json": json.dumps(quad_and_box())}},
        "2": {"class_type": "Realiz3DLoadMesh", "inputs": {"normalize": True, "mesh_file": "(bundled) sample_mesh.glb",
                                                           "mesh": ["1", 0], "batch_index": 0}},
        "3": rig(),
        "4": render(["2", 0], ["3", 0]),
        "5": save(["4", 0], "nm/quad"),
        "6": render(["1", 0], ["3", 0], batch_index=1),      # the MESH straight into Render Views, item 1
        "7": save(["6", 0], "nm/box"),
        "8": {"class_type": "MaskToImage", "inputs": {"mask": ["4", 4]}},
        "9": save(["8", 0], "nm/quadmask"),
    }
    h = server.run(prompt)
    assert h["status"]["status_str"] == "success", error_message(h)
    quad = png(outputs(server, h, "nm/quad")[0]).astype(int)
    mask = png(outputs(server, h, "nm/quadmask")[0])
    # padding ignored: the normalised quad fills the orthographic view exactly (padding zeros at the
    # origin would have shrunk it into a corner)
    assert mask.min() == 255
    # texture the right way up (red above, blue below) times the vertex colours (blue 0.25 linear)
    assert np.abs(quad[4, 16] - [255, 0, 0]).max() <= 1
    assert np.abs(quad[27, 16] - [0, 0, round(255 * 0.25 ** (1 / 2.2))]).max() <= 1
    box = png(outputs(server, h, "nm/box")[0]).astype(int)
    assert np.abs(box[16, 16] - [0, 128, 0]).max() <= 1            # vertex colour, linear 0.5 ** 2.2 -> sRGB 0.5
    assert box[1, 1].max() == 0                                     # the box (not normalised) leaves a border


def test_geometry_mesh_runs_everywhere(server):
    """The 0.3.75 path: a geometry-only MESH (what that host's MESH holds) through Load Mesh and
    Render Views; Load Mesh's MESH output into core's Save 3D Model."""
    spec = quad_and_box()
    spec = {"vertices": [spec["vertices"][1]], "faces": [spec["faces"][1]]}
    prompt = {
        "1": {"class_type": "Realiz3DTestNativeMesh", "inputs": {"spec_json": json.dumps(spec)}},
        "2": {"class_type": "Realiz3DLoadMesh", "inputs": {"normalize": True, "mesh_file": "(bundled) sample_mesh.glb",
                                                           "mesh": ["1", 0]}},
        "3": rig(),
        "4": render(["2", 0], ["3", 0]),
        "5": save(["4", 0], "geo/rgb"),
        "6": render(["1", 0], ["3", 0]),
        "7": save(["6", 0], "geo/raw"),
        "8": {"class_type": "SaveGLB", "inputs": {"mesh": ["2", 1], "filename_prefix": "geo/mesh"}},
    }
    h = server.run(prompt)
    assert h["status"]["status_str"] == "success", error_message(h)
    # colourless: RefAny3D's mid grey; normalised, the box's 1.0 x 0.8 front spans the view's width
    rgb = png(outputs(server, h, "geo/rgb")[0])
    assert (rgb[16] == 127).all() and rgb[1, 16].max() == 0          # 0.5 as SaveImage writes it
    raw = png(outputs(server, h, "geo/raw")[0])   # the MESH as it is: half as wide
    assert raw[16, 16].tolist() == [127] * 3 and raw[16, 4].max() == 0
    import trimesh
    glb = [p for p in server.output_files(h) if p.endswith(".glb")]
    scene = trimesh.load(glb[0], force="scene")
    assert sum(len(g.vertices) for g in scene.geometry.values()) == 8


@ONLY_033
def test_baked_texture_reaches_save_glb(server):
    import trimesh

    from realiz3d.renderers import load_mesh

    prompt = {
        "1": {"class_type": "Realiz3DLoadMesh", "inputs": {"normalize": True,
                                                           "mesh_file": "(bundled) sample_mesh.glb"}},
        "2": {"class_type": "Realiz3DCameraRig", "inputs": {"preset": "orbit", "num_views": 4, "elevation": 20.0,
              "radius": 4.0, "fov": 45.0, "start_azimuth": 10.0, "projection": "perspective", "ortho_height": 2.4,
              "poses_json": "[]"}},
        "3": render(["1", 0], ["2", 0], size=64),
        "4": {"class_type": "Realiz3DBakeTexture", "inputs": {"mesh": ["1", 0], "cameras": ["2", 0], "images": ["3", 0],
              "texture_size": "512", "fill": "pull-push", "uv_mode": "unwrap", "cos_power": 2.0, "min_cos": 0.2,
              "depth_tolerance": 0.01, "backend": "raycast"}},
        "5": {"class_type": "SaveGLB", "inputs": {"mesh": ["4", 4], "filename_prefix": "bake/core"}},
        "6": save(["4", 1], "bake/texture"),
        "7": {"class_type": "Realiz3DSaveTexturedMesh", "inputs": {"mesh": ["4", 0], "filename_prefix": "bake/pack"}},
    }
    h = server.run(prompt, timeout=600)
    assert h["status"]["status_str"] == "success", error_message(h)
    files = server.output_files(h)
    core = [p for p in files if p.endswith(".glb") and "core" in os.path.basename(p)]
    pack = [p for p in files if p.endswith(".glb") and "pack" in os.path.basename(p)]
    assert len(core) == 1 and len(pack) == 1, files
    texture = png(outputs(server, h, "bake/texture")[0])
    geom = list(trimesh.load(core[0], force="scene").geometry.values())
    assert len(geom) == 1
    image = np.asarray(geom[0].visual.material.baseColorTexture.convert("RGB"))
    assert image.shape == (512, 512, 3) and np.array_equal(image, texture)
    # the same UVs as the pack's own GLB of the textured mesh (trimesh flips both to v = 0 at the bottom)
    ours = load_mesh(pack[0])
    assert len(ours.parts) == 1
    np.testing.assert_allclose(np.asarray(geom[0].visual.uv), ours.parts[0].uv, atol=1e-6)
    # and it renders as the pack's own: the GLB's mesh in the pack's renderer, same views
    from realiz3d.renderers import orbit_rig
    cams = orbit_rig(4, 20.0, 4.0, start_azimuth_deg=10.0)
    a = render_views(load_mesh(core[0]), cams, 48, 48, backend="raycast", lit=False)
    b = render_views(normalize(ours), cams, 48, 48, backend="raycast", lit=False)
    assert np.array_equal(a.mask, b.mask) and np.abs(a.albedo - b.albedo).max() < 2 / 255


def l_shape():
    """An asymmetric MESH item: a long box with a small one on its +X, +Y corner, off the origin."""
    def box(c, h):
        v = [[c[0] + x * h[0], c[1] + y * h[1], c[2] + z * h[2]] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
        f = [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],
             [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
        return v, f
    v1, f1 = box((1.5, 0.7, -0.4), (0.8, 0.5, 0.3))
    v2, f2 = box((2.3, 1.4, -0.3), (0.2, 0.3, 0.2))
    return {"vertices": [v1 + v2], "faces": [f1 + [[a + 8, b + 8, c + 8] for a, b, c in f2]]}


def viewer_camera(position, target, fov=40.0, zoom=1.3):
    """A LOAD3D_CAMERA as the 0.33 viewer reports it (OrbitControls: no roll, so the quaternion is
    the look-at's and core's Render Mesh, which aims at the target, sees the same view)."""
    p, t = np.array(position, float), np.array(target, float)
    z = (p - t) / np.linalg.norm(p - t)
    x = np.cross([0, 1, 0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.stack([x, y, z], 1)
    w = math.sqrt(1 + m[0, 0] + m[1, 1] + m[2, 2]) / 2
    q = {"x": (m[2, 1] - m[1, 2]) / (4 * w), "y": (m[0, 2] - m[2, 0]) / (4 * w), "z": (m[1, 0] - m[0, 1]) / (4 * w),
         "w": w}
    xyz = lambda a: dict(zip("xyz", map(float, a)))
    return {"position": xyz(p), "target": xyz(t), "zoom": zoom, "cameraType": "perspective", "quaternion": q,
            "fov": fov, "aspect": 1.0, "near": 0.01, "far": 10000.0,
            "frustum": {"left": -5, "right": 5, "top": 5, "bottom": -5}}


def camera_prompt(info, model=(), frame="asset", size=64):
    return {
        "1": {"class_type": "Realiz3DTestNativeMesh", "inputs": {"spec_json": json.dumps(l_shape())}},
        "2": {"class_type": "Realiz3DLoadMesh", "inputs": {"normalize": True, "mesh_file": "(bundled) sample_mesh.glb",
                                                           "mesh": ["1", 0]}},
        "3": {"class_type": "Realiz3DTestViewerCamera", "inputs": {"camera_json": json.dumps(info),
                                                                   "model_json": json.dumps(list(model))}},
        "4": {"class_type": "Realiz3DCameraRig", "inputs": {"preset": "viewer camera", "num_views": 1,
              "elevation": 0.0, "radius": 4.0, "fov": 45.0, "start_azimuth": 0.0, "projection": "perspective",
              "ortho_height": 2.4, "poses_json": "[]", "camera_info": ["3", 0], "viewer_frame": frame}},
        "5": render(["2", 0], ["4", 0], size=size),
        "6": {"class_type": "MaskToImage", "inputs": {"mask": ["5", 4]}},
        "7": save(["6", 0], "cam/pack"),
    }


def test_viewer_camera_reproduces_the_view(server):
    """Camera Rig's viewer camera on the normalised mesh sees what the viewer's camera sees of the
    mesh in its own frame (the library's reference, on both hosts; the camera input exists on both)."""
    info = server.get("/object_info")["Realiz3DCameraRig"]["input"]
    if "camera_info" not in info.get("optional", {}):
        pytest.skip("this host has no LOAD3D_CAMERA type")
    cam = viewer_camera((4.0, 3.0, 5.0), (1.8, 0.9, -0.3))
    h = server.run(camera_prompt(cam))
    assert h["status"]["status_str"] == "success", error_message(h)
    got = png(outputs(server, h, "cam/pack")[0])[..., 0] > 127
    spec = l_shape()
    mesh = normalize(mesh_from_native(np.array(spec["vertices"]), np.array(spec["faces"])))
    want = render_views(mesh, [camera_from_viewer(cam)], 64, 64, backend="raycast", lit=False).mask[0]
    assert 400 < want.sum() < 64 * 64 * 0.7 and np.array_equal(got, want)


def test_viewer_camera_matches_core_render_mesh(server):
    """Against core's own reading of the viewer camera: Render Mesh (ray cast of the MESH in its own
    frame, the camera_info as the viewer's) gives the same silhouette as Camera Rig -> Render Views of
    the normalised mesh; a model moved with the gizmo (model_3d_info) too."""
    if "RenderMesh" not in server.get("/object_info"):
        pytest.skip("this host has no core Render Mesh (nor LOAD3D_MODEL_INFO): both came with ComfyUI 0.33")
    cam = viewer_camera((4.0, 3.0, 5.0), (1.8, 0.9, -0.3))
    moved = [{"position": {"x": 0.4, "y": -0.5, "z": 0.8}, "quaternion": {"x": 0.0, "y": math.sin(0.3), "z": 0.0,
              "w": math.cos(0.3)}, "scale": {"x": 1.5, "y": 1.5, "z": 1.5}}]
    for model in ((), moved):
        prompt = camera_prompt(cam, model)
        if model:
            prompt["4"]["inputs"]["model_3d_info"] = ["3", 1]
        prompt["8"] = {"class_type": "RenderMesh", "inputs": {"mesh": ["1", 0], "mode": "solid", "width": 64,
                       "height": 64, "background": "#000000", "camera_info": ["3", 0]}}
        if model:
            prompt["8"]["inputs"]["model_3d_info"] = ["3", 1]
        prompt["9"] = {"class_type": "MaskToImage", "inputs": {"mask": ["8", 1]}}
        prompt["10"] = save(["9", 0], "cam/core")
        h = server.run(prompt)
        assert h["status"]["status_str"] == "success", error_message(h)
        ours = png(outputs(server, h, "cam/pack")[-1])[..., 0] > 127
        core = png(outputs(server, h, "cam/core")[-1])[..., 0] > 127
        assert ours.sum() > 400
        # both ray cast pixel centres; a pixel or two on an edge may fall either way
        assert (ours != core).sum() <= 6, (ours != core).sum()
