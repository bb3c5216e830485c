"""ComfyUI's native MESH conventions (glTF: UV v = 0 at the top, linear vertex colours, zero-padded
batches) into and out of the pack's Mesh, and the 3D viewer's camera (three.js) as a pack camera,
checked against an independent three.js projection. No ComfyUI needed."""
import math

import numpy as np
import pytest

from meshes import colored_box
from realiz3d.renderers import InputError, Mesh, MeshPart, load_mesh, normalize, render_views
from realiz3d.renderers.cameras import Camera, camera_from_viewer, look_at
from realiz3d.renderers.mesh_io import mesh_from_native, native_arrays
from realiz3d.renderers.sample_mesh import box_arrays

FRONT = [Camera(look_at((0.0, 0.0, 3.0)), "orthographic", ortho_height=2.0)]


def quad(x0=-1.0, x1=1.0, y0=-1.0, y1=1.0):
    """A quad in the z = 0 plane facing +Z; corners bottom-left, bottom-right, top-right, top-left."""
    v = np.array([[x0, y0, 0], [x1, y0, 0], [x1, y1, 0], [x0, y1, 0]], np.float32)
    return v, np.array([[0, 1, 2], [0, 2, 3]], np.int64)


def test_uvs_texture_and_colours_render_where_expected():
    v, f = quad()
    uvs = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], np.float32)   # glTF: v = 0 is the image's top row
    texture = np.zeros((8, 8, 3), np.float32)
    texture[:4, :, 0] = 1.0                                        # top half red
    texture[4:, :, 2] = 1.0                                        # bottom half blue
    # linear vertex colours multiplying the texture: blue 0.25 (sRGB 0.25 ** (1 / 2.2) = 0.533)
    colors = np.tile(np.array([[1.0, 1.0, 0.25]], np.float32), (4, 1))
    mesh = mesh_from_native(v[None], f[None], uvs=uvs[None], vertex_colors=colors[None], texture=texture[None])
    albedo = render_views(mesh, FRONT, 32, 32, backend="raycast", lit=False).albedo[0]
    top, bottom = albedo[2, 16], albedo[29, 16]
    np.testing.assert_allclose(top, [1.0, 0.0, 0.0], atol=0.02)     # red above, not blue: UV origin converted
    np.testing.assert_allclose(bottom, [0.0, 0.0, 0.25 ** (1 / 2.2)], atol=1e-3)   # blue x the vertex colour
    assert (albedo[2:14, 16, 0] > 0.99).all() and (albedo[18:30, 16, 2] > 0.5).all()   # the seam at mid height


def test_vertex_colours_are_linear_light():
    v, f = quad()
    colors = np.tile(np.array([[0.5 ** 2.2, 0.2 ** 2.2, 1.0]], np.float32), (4, 1))
    mesh = mesh_from_native(v[None], f[None], vertex_colors=colors[None])
    albedo = render_views(mesh, FRONT, 8, 8, backend="raycast", lit=False).albedo[0]
    np.testing.assert_allclose(albedo[4, 4], [0.5, 0.2, 1.0], atol=1e-4)


def test_padded_batch_item_ignores_the_padding():
    q, qf = quad(2.0, 3.0, 1.0, 2.0)                             # away from the origin, where padding sits
    b, bf, _, _ = box_arrays(np.array([0.5, 0.5, 0.5]))
    vertices = np.zeros((2, len(b), 3), np.float32)
    faces = np.zeros((2, len(bf), 3), np.int64)
    vertices[0, :4], faces[0, :2] = q, qf
    vertices[1], faces[1] = b, bf
    colors = np.ones((2, len(b), 3), np.float32)
    counts, fcounts = np.array([4, len(b)]), np.array([2, len(bf)])
    first = mesh_from_native(vertices, faces, vertex_colors=colors, vertex_counts=counts, face_counts=fcounts)
    assert len(first.vertices) == 4 and first.num_faces == 2
    np.testing.assert_allclose(first.bounds, [[2, 1, 0], [3, 2, 0]])
    second = mesh_from_native(vertices, faces, vertex_counts=counts, face_counts=fcounts, index=1)
    assert len(second.vertices) == len(b) and second.num_faces == len(bf)
    # without the counts the zero padding would be geometry: the bounds would reach the origin
    unsliced = mesh_from_native(vertices, faces, index=0)
    assert unsliced.bounds[0, 0] == 0.0
    with pytest.raises(InputError) as err:
        mesh_from_native(vertices, faces, vertex_counts=counts, face_counts=fcounts, index=2)
    assert err.value.input_name == "batch_index"
    with pytest.raises(InputError) as err:
        mesh_from_native(vertices, faces, uvs=np.zeros((2, 3, 2)), vertex_counts=counts, face_counts=fcounts)
    assert err.value.input_name == "mesh" and "uvs" in str(err.value)
    with pytest.raises(InputError) as err:
        mesh_from_native(vertices, faces, vertex_counts=np.array([4, 99]), face_counts=fcounts)
    assert err.value.input_name == "mesh" and "vertex_counts" in str(err.value)


def test_native_arrays_round_trip_the_multi_part_sample():
    """Two parts (vertex-coloured cone, textured box) into one MESH item (textures in an atlas) and back:
    the same albedo from every side."""
    from realiz3d.nodes.paths import BUNDLED_FILES, BUNDLED_SAMPLE
    from realiz3d.renderers import orbit_rig

    mesh = normalize(load_mesh(BUNDLED_FILES[BUNDLED_SAMPLE]))
    a = native_arrays(mesh)
    assert a.texture is not None and a.uvs is not None and a.vertex_colors is not None
    back = mesh_from_native(a.vertices, a.faces, uvs=a.uvs, vertex_colors=a.vertex_colors, texture=a.texture,
                            normals=a.normals)
    cams = orbit_rig(4, 20.0, 4.0)
    want = render_views(mesh, cams, 48, 48, backend="raycast", lit=False)
    got = render_views(back, cams, 48, 48, backend="raycast", lit=False)
    assert np.array_equal(want.mask, got.mask)
    assert np.abs(want.albedo - got.albedo).max() < 1e-3


def test_native_arrays_single_texture_is_kept_and_face_colours_split():
    v, f = quad()
    tex = np.random.default_rng(0).integers(0, 256, (5, 7, 4)).astype(np.uint8)
    part = MeshPart(vertices=v.astype(float), faces=f, uv=np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32),
                    texture=tex, base_color=np.ones(4, np.float32))
    a = native_arrays(Mesh(parts=[part]))
    assert np.array_equal(np.round(a.texture * 255).astype(np.uint8), tex[..., :3])
    np.testing.assert_allclose(a.uvs[:, 1], 1.0 - part.uv[:, 1])    # v flipped to glTF's top origin
    assert a.vertex_colors is None                                   # white factor, no colours: none written
    box = native_arrays(colored_box())
    assert len(box.vertices) == 3 * colored_box().num_faces and box.texture is None
    np.testing.assert_allclose(box.vertex_colors.max(0), [1.0, 1.0, 1.0])   # red, green and blue sides


# --- the 3D viewer's camera ------------------------------------------------------------------------

def threejs_rotation(q):
    """Matrix4.makeRotationFromQuaternion (three.js), written out from its definition."""
    x, y, z, w = q
    x2, y2, z2 = x + x, y + y, z + z
    xx, xy, xz, yy, yz, zz = x * x2, x * y2, x * z2, y * y2, y * z2, z * z2
    wx, wy, wz = w * x2, w * y2, w * z2
    return np.array([[1 - (yy + zz), xy - wz, xz + wy], [xy + wz, 1 - (xx + zz), yz - wx],
                     [xz - wy, yz + wx, 1 - (xx + yy)]])


def threejs_projection(info, aspect):
    """PerspectiveCamera / OrthographicCamera.updateProjectionMatrix (three.js)."""
    n, f, zoom = info["near"], info["far"], info["zoom"]
    if info["cameraType"] == "perspective":
        top = n * math.tan(math.radians(info["fov"]) / 2) / zoom
        height = 2 * top
        width = aspect * height
        l, r, t, b = -width / 2, width / 2, top, top - height
        return np.array([[2 * n / (r - l), 0, (r + l) / (r - l), 0], [0, 2 * n / (t - b), (t + b) / (t - b), 0],
                         [0, 0, -(f + n) / (f - n), -2 * f * n / (f - n)], [0, 0, -1, 0]])
    fr = info["frustum"]
    dx, dy = (fr["right"] - fr["left"]) / (2 * zoom), (fr["top"] - fr["bottom"]) / (2 * zoom)
    cx, cy = (fr["right"] + fr["left"]) / 2, (fr["top"] + fr["bottom"]) / 2
    l, r, t, b = cx - dx, cx + dx, cy + dy, cy - dy
    return np.array([[2 / (r - l), 0, 0, -(r + l) / (r - l)], [0, 2 / (t - b), 0, -(t + b) / (t - b)],
                     [0, 0, -2 / (f - n), -(f + n) / (f - n)], [0, 0, 0, 1]])


def threejs_pixels(points, info, width, height, model=None):
    """Pixel (column, row) coordinates of world points in three.js: clip = P @ inverse(camera matrix)
    @ model matrix; row 0 at the top, pixel centres at integers."""
    world = np.eye(4)
    world[:3, :3] = threejs_rotation([info["quaternion"][k] for k in "xyzw"])
    world[:3, 3] = [info["position"][k] for k in "xyz"]
    m = np.eye(4)
    if model is not None:
        m[:3, :3] = threejs_rotation([model["quaternion"][k] for k in "xyzw"]) * model["scale"]["x"]
        m[:3, 3] = [model["position"][k] for k in "xyz"]
    clip = threejs_projection(info, width / height) @ np.linalg.inv(world) @ m @ \
        np.concatenate([points, np.ones((len(points), 1))], 1).T
    ndc = clip[:3] / clip[3]
    return np.stack([(ndc[0] + 1) / 2 * width - 0.5, (1 - ndc[1]) / 2 * height - 0.5], 1)


def asymmetric_mesh():
    """An off-centre box with a smaller box stuck on its +X, +Y corner (no symmetry left)."""
    v1, f1, _, _ = box_arrays(np.array([0.8, 0.5, 0.3]))
    v2, f2, _, _ = box_arrays(np.array([0.2, 0.3, 0.2]))
    v = np.concatenate([v1 + [1.5, 0.7, -0.4], v2 + [2.3, 1.4, -0.3]])
    return Mesh(parts=[MeshPart(vertices=v, faces=np.concatenate([f1, f2 + len(v1)]), name="l")], source="asym")


def quaternion_of(cam_to_world):
    """(x, y, z, w) of a rotation matrix (Shepperd's method, independent of the pack)."""
    m = cam_to_world[:3, :3]
    w = math.sqrt(max(0.0, 1 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    return {"x": (m[2, 1] - m[1, 2]) / (4 * w), "y": (m[0, 2] - m[2, 0]) / (4 * w),
            "z": (m[1, 0] - m[0, 1]) / (4 * w), "w": w}


def viewer_state(kind, position, target, roll_deg=0.0, **extra):
    """A LOAD3D_CAMERA dict as the viewer writes it, its quaternion with a roll OrbitControls never makes
    (so the quaternion, not the target, must decide the orientation)."""
    m = look_at(position, target)
    a = math.radians(roll_deg)
    roll = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    m[:3, :3] = m[:3, :3] @ roll
    xyz = lambda p: {"x": float(p[0]), "y": float(p[1]), "z": float(p[2])}
    info = {"position": xyz(position), "target": xyz(target), "quaternion": quaternion_of(m), "cameraType": kind,
            "zoom": 1.0, "fov": 35.0, "aspect": 1.0, "near": 0.01, "far": 10000.0,
            "frustum": {"left": -5, "right": 5, "top": 5, "bottom": -5}}
    info.update(extra)
    return info


@pytest.mark.parametrize("kind, extra", [
    ("perspective", dict(fov=40.0, zoom=1.6)),
    ("orthographic", dict(zoom=1.3, frustum={"left": -2.5, "right": 3.5, "top": 2.5, "bottom": -2.0})),
])
def test_viewer_camera_lands_where_threejs_projects(kind, extra):
    """Every surface point the pack renders (its point map, asset frame) projects back to its own pixel
    under three.js's matrices; the mesh is normalised (asset and render frames differ)."""
    mesh = normalize(asymmetric_mesh())
    width, height = 80, 60                              # 4:3, the frustum above is 6 x 4.5
    info = viewer_state(kind, (4.0, 3.0, 5.0), (1.8, 0.9, -0.3), roll_deg=12.0, **extra)
    cam = camera_from_viewer(info, frame="asset")
    bundle = render_views(mesh, [cam], width, height, backend="raycast", lit=False)
    rows, cols = np.nonzero(bundle.mask[0])
    assert 300 < len(rows) < width * height * 0.8, len(rows)     # the object is in view, not filling it
    px = threejs_pixels(bundle.points[0][rows, cols].astype(np.float64), info, width, height)
    np.testing.assert_allclose(px[:, 0], cols, atol=2e-3)
    np.testing.assert_allclose(px[:, 1], rows, atol=2e-3)
    # and a camera taking the target instead of the rolled quaternion would miss
    no_quat = dict(info, quaternion=None)
    other = render_views(mesh, [camera_from_viewer(no_quat, frame="asset")], width, height, backend="raycast",
                         lit=False)
    assert (other.mask[0] != bundle.mask[0]).sum() > 50


def test_viewer_fit_and_model_transform():
    """The older viewer's automatic fit (longest side 5, standing on y = 0) and a model moved with the
    gizmo (model_3d_info): the picture matches three.js's with the same model matrix."""
    mesh = normalize(asymmetric_mesh())
    lo, hi = mesh.asset_bounds
    k = 5.0 / np.max(hi - lo)
    fit = {"position": {"x": -k * (lo[0] + hi[0]) / 2, "y": -k * lo[1], "z": -k * (lo[2] + hi[2]) / 2},
           "quaternion": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}, "scale": {"x": k, "y": k, "z": k}}
    info = viewer_state("perspective", (6.0, 5.0, 7.0), (0.0, 1.2, 0.0), roll_deg=-5.0)
    for cam, model in ((camera_from_viewer(info, frame="viewer fit"), fit),
                       (camera_from_viewer(info, model_transform=fit, frame="asset"), fit)):
        bundle = render_views(mesh, [cam], 64, 64, backend="raycast", lit=False)
        rows, cols = np.nonzero(bundle.mask[0])
        assert len(rows) > 200
        px = threejs_pixels(bundle.points[0][rows, cols].astype(np.float64), info, 64, 64, model)
        np.testing.assert_allclose(px, np.stack([cols, rows], 1), atol=2e-3)
    turned = {"position": {"x": 0.5, "y": -1.0, "z": 2.0}, "quaternion": {"x": 0.0, "y": math.sin(0.4), "z": 0.0,
              "w": math.cos(0.4)}, "scale": {"x": 2.0, "y": 2.0, "z": 2.0}}
    info = viewer_state("perspective", (9.0, 4.0, 9.0), (3.0, 0.5, 2.0))
    bundle = render_views(mesh, [camera_from_viewer(info, model_transform=turned)], 64, 64, backend="raycast",
                          lit=False)
    rows, cols = np.nonzero(bundle.mask[0])
    assert len(rows) > 200
    px = threejs_pixels(bundle.points[0][rows, cols].astype(np.float64), info, 64, 64, turned)
    np.testing.assert_allclose(px, np.stack([cols, rows], 1), atol=2e-3)
    with pytest.raises(InputError) as err:
        camera_from_viewer(info, model_transform=dict(turned, scale={"x": 1, "y": 2, "z": 1}))
    assert err.value.input_name == "model_3d_info"


def test_viewer_camera_bad_input_and_frame_guard():
    with pytest.raises(InputError) as err:
        camera_from_viewer({"target": {"x": 0}})
    assert err.value.input_name == "camera_info"
    with pytest.raises(InputError) as err:
        camera_from_viewer({"position": {"x": 0, "y": 0, "z": 5}, "cameraType": "fisheye"})
    assert err.value.input_name == "camera_info"
    # only the 0.3.75 fields (position, target, zoom, cameraType): the viewer's default 35 degree FOV
    cam = camera_from_viewer({"position": {"x": 0, "y": 0, "z": 5}, "target": {"x": 0, "y": 0, "z": 0},
                              "zoom": 2, "cameraType": "perspective"})
    assert math.isclose(math.tan(cam.yfov / 2), math.tan(math.radians(17.5)) / 2)
    from realiz3d.renderers.render import check_cameras_outside
    with pytest.raises(InputError) as err:
        check_cameras_outside(normalize(asymmetric_mesh()), [cam])       # an asset-frame camera, unmapped
    assert err.value.input_name == "cameras" and "asset frame" in str(err.value)
