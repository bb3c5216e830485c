"""Loading meshes from files (GLB, GLTF, OBJ, PLY, STL) and from in-memory arrays."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .errors import InputError
from .mesh import DEFAULT_ALBEDO, Mesh, MeshPart, validate, vertex_normals

MESH_EXTENSIONS = (".glb", ".gltf", ".obj", ".ply", ".stl")

log = logging.getLogger(__name__)


class ConfinedResolver:
    """A trimesh resolver that reads the files a mesh refers to relative to the mesh's folder,
    only inside ``root``: a name that is absolute, climbs out with '..' or passes through a link
    leading outside is refused (recorded in ``refused``; trimesh's loaders swallow errors of
    material files, so the caller checks the record). Names not found are kept in ``missing``."""

    def __init__(self, mesh_path: str, root: str, folder: Optional[str] = None):
        self.root = os.path.realpath(root)
        self.folder = folder if folder is not None else os.path.dirname(os.path.abspath(mesh_path))
        self.file_name = os.path.basename(mesh_path)
        self.refused: list[str] = []
        self.missing: list[str] = []

    def _path(self, name: str) -> Optional[str]:
        raw = str(name)
        clean = raw.strip()
        if clean.startswith("file://"):
            clean = clean[len("file://"):]
        if not clean or os.path.isabs(clean) or clean.startswith(("/", "\\")) or ":" in clean[:3] or "\0" in clean:
            return None
        full = os.path.realpath(os.path.join(os.path.realpath(self.folder), clean))
        if os.path.commonpath([full, self.root]) != self.root:
            return None
        return full

    def get(self, name: str) -> bytes:
        path = self._path(name)
        if path is None:
            if name not in self.refused:
                self.refused.append(str(name))
            raise ValueError(f"'{name}' is outside the allowed folder")
        if not os.path.isfile(path):    # exporters often keep a folder in the name: try the mesh's folder
            alone = self._path(os.path.basename(str(name).strip().replace("\\", "/")))
            if alone is not None and os.path.isfile(alone):
                with open(alone, "rb") as f:
                    return f.read()
            if name not in self.missing:
                self.missing.append(str(name))
            raise FileNotFoundError(name)
        with open(path, "rb") as f:
            return f.read()

    def __getitem__(self, name):
        return self.get(name)

    def get_base(self):
        return self.folder

    def keys(self):
        return iter(())

    def namespaced(self, namespace: str) -> "ConfinedResolver":
        child = ConfinedResolver(self.file_name, self.root, os.path.join(self.folder, namespace))
        child.refused, child.missing = self.refused, self.missing      # one record for the whole load
        return child

    def write(self, name, data):
        raise ValueError("the mesh reader does not write files")


def check_mesh_file(path: str, input_name: str = "mesh_file") -> None:
    """InputError unless ``path`` is an existing file with a mesh extension (what can be told
    before reading it)."""
    name = os.path.basename(path)
    if os.path.splitext(path)[1].lower() not in MESH_EXTENSIONS:
        raise InputError(input_name, f"'{name}' is not a supported mesh file; use one of "
                                     f"{', '.join(MESH_EXTENSIONS)}.")
    if not os.path.isfile(path):
        raise InputError(input_name, f"'{name}' does not exist. Put the file in ComfyUI's input folder "
                                     "(or upload it) and pick it from the list.")


def load_mesh(path: str, input_name: str = "mesh_file", root: Optional[str] = None,
              root_name: str = "the input folder") -> Mesh:
    """Load a mesh file, flattening a scene graph with its transforms.

    Keeps per part: UVs and the base-colour texture, vertex or face colours, the base
    colour factor, and vertex normals. Raises :class:`InputError` for a missing file, an
    unknown extension, an unreadable file, faces indexing missing vertices, or a file
    without triangles.

    Files the mesh refers to (glTF buffers and images, OBJ material libraries and textures)
    are read only from inside ``root`` (default: the folder holding the mesh; ComfyUI's input
    folder from Load Mesh), named ``root_name`` in messages: a reference that leaves it (``../``,
    an absolute path, a link out) is refused by name. A referenced material or texture that is
    missing gives a note in ``Mesh.notes`` (and a log warning); the mesh falls back to grey.
    """
    import trimesh

    check_mesh_file(path, input_name)
    name = os.path.basename(path)
    ext = os.path.splitext(path)[1].lower()
    resolver = ConfinedResolver(path, root if root is not None else os.path.dirname(os.path.abspath(path)))
    try:
        with np.errstate(all="ignore"):
            scene = trimesh.load(path, force="scene", process=False, resolver=resolver)
    except Exception as exc:  # trimesh raises many types for malformed files
        _check_references(resolver, name, input_name, root_name)
        raise InputError(input_name, _read_error(name, ext, exc)) from exc
    _check_references(resolver, name, input_name, root_name)
    parts = []
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry[geom_name]
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue  # point clouds and line paths carry no surface to render
        check_face_indices(np.asarray(geom.faces), len(geom.vertices), name, str(node), input_name)
        with np.errstate(all="ignore"):   # NaN vertices are reported by validate()
            try:
                parts.append(_part_from_trimesh(geom, np.asarray(transform, np.float64), str(node)))
            except Exception as exc:   # broken materials, colours, UVs, textures (PIL, zlib, MemoryError)
                raise InputError(input_name, f"'{name}' part '{node}' could not be read ({type(exc).__name__}: "
                                             f"{exc}). The file is damaged; export it again.") from exc
    notes = [f"'{name}' refers to '{ref}', which is missing; " + (
        "its materials were not loaded and the mesh is grey." if ref.lower().endswith(".mtl") else
        "the texture was not loaded and the surface falls back to its base colour (grey if none)."
    ) + " Put the file next to the mesh." for ref in resolver.missing]
    for note in notes:
        log.warning("Load Mesh: %s", note)
    mesh = Mesh(parts=parts, source=name, notes=notes)
    if not parts:
        has_points = any(len(getattr(g, "vertices", ())) for g in scene.geometry.values())
        if ext == ".stl" and _stl_truncated(path):
            raise InputError(input_name, f"'{name}' is truncated or damaged: the STL header announces more "
                                         "triangles than the file holds. Export it again.")
        what = "only points or lines (a point cloud?)" if has_points else "nothing (empty mesh)"
        raise InputError(input_name, f"'{name}' contains {what}; the renderer needs triangle faces. "
                                     "Load a mesh with faces.")
    return validate(mesh, input_name)


def check_face_indices(faces: np.ndarray, n_vertices: int, name: str, part: str, input_name: str) -> None:
    """InputError when a face indexes a vertex that does not exist (negative, or >= n_vertices)."""
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise InputError(input_name, f"'{name}' part '{part}' has malformed faces (shape {faces.shape}); "
                                     "the file is damaged. Export it again.")
    if not len(faces):
        return
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= n_vertices:
        bad = lo if lo < 0 else hi
        raise InputError(input_name, f"'{name}' part '{part}' has faces that index vertices that do not exist "
                                     f"(index {bad}, but the part has {n_vertices} vertices, numbered 0.."
                                     f"{n_vertices - 1}). The file is corrupt; export it again.")


def _read_error(name: str, ext: str, exc: Exception) -> str:
    if isinstance(exc, IndexError):        # trimesh's OBJ reader indexes vertices while parsing faces
        return (f"'{name}' has faces that index vertices that do not exist ({exc}). The file is corrupt; "
                "export it again.")
    if ext == ".stl" and "header" in str(exc).lower():
        return f"'{name}' is truncated or damaged ({exc}). Export it again."
    return (f"'{name}' could not be read as {ext[1:].upper()} ({type(exc).__name__}: {exc}). Check that the "
            "file is a valid mesh.")


def _stl_truncated(path: str) -> bool:
    """A binary STL whose header counts more triangles than its bytes hold (or with a partial header)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(84)
    except OSError:
        return False
    if head[:5].lower() == b"solid" and b"facet" in open(path, "rb").read(4096).lower():
        return False            # ASCII STL: a missing 'endsolid' is not detectable as truncation here
    if 0 < size < 84:
        return True
    if size < 84:
        return False
    count = int(np.frombuffer(head[80:84], "<u4")[0])
    return size < 84 + 50 * count or (count == 0 and size > 84)


def _check_references(resolver: "ConfinedResolver", name: str, input_name: str, root_name: str) -> None:
    if resolver.refused:
        ref = resolver.refused[0]
        raise InputError(input_name, f"'{name}' refers to '{ref}', outside {root_name}; a mesh may only use "
                                     "files inside it. Copy the file next to the mesh and refer to it by a "
                                     "relative name.")


def mesh_from_arrays(vertices, faces, vertex_colors=None, source: str = "MESH input",
                     input_name: str = "mesh") -> Mesh:
    """A Mesh from plain arrays (e.g. ComfyUI's native MESH type): vertices [N, 3], faces [M, 3],
    optional vertex colours [N, 3|4] in [0, 1]."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if v.ndim != 2 or v.shape[-1] != 3 or f.ndim != 2 or f.shape[-1] != 3:
        raise InputError(input_name, f"expected vertices [N, 3] and faces [M, 3], got {v.shape} and {f.shape}.")
    part = MeshPart(vertices=v, faces=f, name="mesh")
    if vertex_colors is not None:
        c = np.asarray(vertex_colors, np.float32)
        part.vertex_colors = np.concatenate([c[:, :3], np.ones((len(c), 1), np.float32)], axis=1)
    return validate(Mesh(parts=[part], source=source), input_name)


def _part_from_trimesh(geom, transform: np.ndarray, name: str) -> MeshPart:
    import trimesh

    rot, shift = transform[:3, :3], transform[:3, 3]
    vertices = np.asarray(geom.vertices, np.float64) @ rot.T + shift
    faces = np.asarray(geom.faces, np.int64)
    mirrored = np.linalg.det(rot) < 0
    if mirrored:  # a mirroring transform turns the winding inside out; keep fronts outward
        faces = faces[:, ::-1].copy()
    normals = _vertex_normals(geom) @ np.linalg.inv(rot)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    part = MeshPart(vertices=vertices, faces=faces, vertex_normals=normals, name=name)

    visual = geom.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        material = visual.material
        image, factor = _material_color(material)
        part.base_color = factor
        if image is not None and visual.uv is not None and len(visual.uv) == len(vertices):
            part.texture = image
            part.uv = np.asarray(visual.uv, np.float32)
    elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind is not None:
        part.base_color = np.ones(4, np.float32)
        if visual.kind == "vertex":
            part.vertex_colors = np.asarray(visual.vertex_colors, np.float32) / 255.0
        elif visual.kind == "face":
            part.face_colors = np.asarray(visual.face_colors, np.float32) / 255.0
    return part


def _vertex_normals(geom) -> np.ndarray:
    """The file's vertex normals when it has them, else trimesh's (angle-weighted) normals
    computed in a normalised copy of the part (centred, longest side 1), so that a mesh at
    1e-6 scale gets the same normals as at scale 1 (trimesh zeroes the normals of faces whose
    cross product falls below its absolute tolerance)."""
    import trimesh

    v = np.asarray(geom.vertices, np.float64)
    stored = geom._cache.cache.get("vertex_normals") if hasattr(geom, "_cache") else None
    if stored is not None and np.shape(stored) == v.shape:
        return np.asarray(stored, np.float64)
    finite = v[np.isfinite(v).all(axis=1)]
    if not len(finite):
        return np.zeros_like(v)
    lo, hi = finite.min(0), finite.max(0)
    size = float(np.max(hi - lo))
    if not np.isfinite(size) or size <= 0:
        size = 1.0
    unit = trimesh.Trimesh(vertices=(v - (lo + hi) / 2) / size, faces=np.asarray(geom.faces), process=False)
    return np.asarray(unit.vertex_normals, np.float64)


def _material_color(material) -> tuple[Optional[np.ndarray], np.ndarray]:
    """(texture uint8 [H, W, 4] or None, base colour factor float32 [4]) of a trimesh material."""
    import trimesh

    image, factor = None, np.ones(4, np.float32)
    if isinstance(material, trimesh.visual.material.PBRMaterial):
        image = material.baseColorTexture
        if material.baseColorFactor is not None:
            factor = np.asarray(material.baseColorFactor, np.float32).reshape(-1)[:4]
            if factor.max() > 1.0:  # trimesh sometimes stores factors as 0..255
                factor = factor / 255.0
    elif isinstance(material, trimesh.visual.material.SimpleMaterial):
        image = material.image
        if image is None and material.diffuse is not None:
            factor = np.asarray(material.diffuse, np.float32)[:4] / 255.0
    if image is not None:
        image = np.asarray(image.convert("RGBA"), np.uint8)
    return image, factor


# --- ComfyUI's MESH (glTF's conventions) -------------------------------------------------------
#: ComfyUI's MESH stores what SaveGLB writes to glTF unchanged: UV v = 0 is the texture's top row,
#: the texture an sRGB image [H, W, 3] in [0, 1] with row 0 at the top, vertex colours in linear
#: light (glTF COLOR_0; core's Paint Mesh stores srgb ** 2.2, its Render Mesh shows colour ** (1 / 2.2)).
NATIVE_GAMMA = 2.2
#: texels of edge colour around each texture packed into a MESH atlas (bilinear lookups at an
#: island's border never read a neighbour)
ATLAS_GUTTER = 4


@dataclass
class NativeArrays:
    """One mesh in ComfyUI's MESH conventions (see :data:`NATIVE_GAMMA`), in the render frame.

    vertices float32 [N, 3]; faces int64 [M, 3]; uvs float32 [N, 2] (v = 0 at the top) or None;
    vertex_colors float32 [N, 3] linear or None; texture float32 [H, W, 3] sRGB in [0, 1] or
    None; normals float32 [N, 3] or None; notes: what the MESH cannot hold, for the user."""

    vertices: np.ndarray
    faces: np.ndarray
    uvs: Optional[np.ndarray] = None
    vertex_colors: Optional[np.ndarray] = None
    texture: Optional[np.ndarray] = None
    normals: Optional[np.ndarray] = None
    notes: list = field(default_factory=list)


def mesh_from_native(vertices, faces, uvs=None, vertex_colors=None, texture=None, normals=None,
                     vertex_counts=None, face_counts=None, index: int = 0, base_color=None,
                     source: str = "MESH input", input_name: str = "mesh", index_name: str = "batch_index") -> Mesh:
    """Item ``index`` of a batch in ComfyUI's MESH layout as a Mesh (asset frame = the MESH's frame).

    vertices [B, N, 3], faces [B, M, 3] (zero-padded when vertex_counts / face_counts [B] give the
    items' real sizes: the padding is dropped); per-vertex uvs [B, N, 2], vertex_colors
    [B, N, 3 | 4] (linear) and normals [B, N, 3]; texture [B, H, W, 3 | 4] in [0, 1] (a batch of
    one serves every item); base_color: the material's base colour factor [4], if set. An
    unbatched item ([N, 3], [M, 3], ...) is taken as a batch of one. Converted to the pack's
    conventions (CONVENTIONS.md "Textures", "Colours"). InputError naming ``input_name`` (or
    ``index_name``) for shapes that do not fit together.
    """
    def arr(a, what, dtype=np.float64):
        try:
            return np.asarray(a, dtype)
        except (TypeError, ValueError) as exc:
            raise InputError(input_name, f"{what} is not numeric ({exc}).") from exc

    v = arr(vertices, "vertices")
    f = np.asarray(faces)
    batched = v.ndim == 3
    if not batched:
        v, f = v[None], f[None]
    if v.ndim != 3 or v.shape[-1] != 3 or f.ndim != 3 or f.shape[-1] != 3 or len(f) != len(v):
        raise InputError(input_name, f"expected vertices [B, N, 3] and faces [B, M, 3] with the same B, got "
                                     f"{list(np.shape(vertices))} and {list(np.shape(faces))}.")
    if not (np.issubdtype(f.dtype, np.integer) or (np.issubdtype(f.dtype, np.floating)
                                                   and np.array_equal(f, np.round(f)))):
        raise InputError(input_name, f"faces must hold vertex indices (integers), got {f.dtype}.")
    b = len(v)
    if not isinstance(index, (int, np.integer)) or not 0 <= index < b:
        raise InputError(index_name, f"is {index}, but the MESH holds {b} item{'s' if b != 1 else ''} "
                                     f"(0..{b - 1}).")
    n, m = v.shape[1], f.shape[1]
    for what, counts, size in (("vertex_counts", vertex_counts, n), ("face_counts", face_counts, m)):
        if counts is None:
            continue
        c = np.asarray(counts).reshape(-1)
        if len(c) != b or not np.all((c >= 0) & (c <= size)):
            raise InputError(input_name, f"{what} {c.tolist()} does not fit a batch of {b} padded to {size}.")
    n = int(np.asarray(vertex_counts).reshape(-1)[index]) if vertex_counts is not None else n
    m = int(np.asarray(face_counts).reshape(-1)[index]) if face_counts is not None else m

    def per_vertex(a, what, channels):
        if a is None:
            return None
        a = arr(a, what, np.float32)
        if not batched and a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or a.shape[0] not in (1, b) or a.shape[1] < n or a.shape[2] not in channels:
            raise InputError(input_name, f"{what} has shape {list(a.shape)}; expected [{b}, {v.shape[1]}, "
                                         f"{' or '.join(map(str, channels))}] (one per vertex).")
        return a[index if len(a) > 1 else 0, :n]

    uv = per_vertex(uvs, "uvs", (2,))
    colors = per_vertex(vertex_colors, "vertex_colors", (3, 4))
    vn = per_vertex(normals, "normals", (3,))
    part = MeshPart(vertices=v[index, :n], faces=f[index, :m].astype(np.int64), name="mesh")
    notes = []
    check_face_indices(part.faces, n, source, "mesh", input_name)
    if uv is not None:
        part.uv = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1).astype(np.float32)   # v = 0 at the bottom
    if texture is not None:
        t = arr(texture, "texture", np.float32)
        if not batched and t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[0] not in (1, b) or t.shape[-1] not in (3, 4) or min(t.shape[1:3]) < 1:
            raise InputError(input_name, f"texture has shape {list(t.shape)}; expected [{b}, H, W, 3].")
        t = np.nan_to_num(t[index if len(t) > 1 else 0], nan=0.0)
        rgba = np.full(t.shape[:2] + (4,), 255, np.uint8)
        rgba[..., :t.shape[-1]] = np.round(np.clip(t, 0.0, 1.0) * 255.0)
        if part.uv is not None:
            part.texture = rgba
        else:
            notes.append(f"'{source}' has a texture but no UVs to map it with; the texture is not used.")
    if colors is not None:
        srgb = np.clip(colors, 0.0, 1.0)
        srgb[:, :3] = srgb[:, :3] ** (1.0 / NATIVE_GAMMA)
        part.vertex_colors = np.concatenate([srgb[:, :3], srgb[:, 3:] if srgb.shape[1] == 4 else
                                             np.ones((n, 1), np.float32)], axis=1)
    if vn is not None and np.isfinite(vn).all():
        length = np.linalg.norm(vn, axis=1, keepdims=True)
        part.vertex_normals = np.divide(vn, length, out=np.zeros_like(vn), where=length > 0).astype(np.float64)
    else:
        part.vertex_normals = vertex_normals(part.vertices, part.faces)
    if base_color is not None:
        part.base_color = np.resize(arr(base_color, "base colour factor", np.float32).reshape(-1), 4)
    elif part.texture is not None or part.vertex_colors is not None:
        part.base_color = np.ones(4, np.float32)
    return validate(Mesh(parts=[part], source=source, notes=notes), input_name)


def native_arrays(mesh: Mesh) -> NativeArrays:
    """``mesh`` (render frame) as one item in ComfyUI's MESH conventions, as glTF renders it (the
    'multiplied' albedo): the parts' textures packed side by side into one atlas (a MESH holds one
    texture), each part's base colour x vertex colour x face colour as linear vertex colours
    (face colours split the part's vertices). A mesh without any colour gets none (core's grey)."""
    parts, notes = [], []
    for p in mesh.parts:        # face colours become vertex colours of unshared corners
        if p.face_colors is None:
            parts.append((p, np.arange(len(p.vertices)), p.faces, None))
        else:
            corner = p.faces.reshape(-1)
            parts.append((p, corner, np.arange(len(corner)).reshape(-1, 3), np.repeat(p.face_colors, 3, axis=0)))
    textured = [p.texture is not None and p.uv is not None for p, *_ in parts]
    coloured = any(t or p.vertex_colors is not None or fc is not None or
                   not np.allclose(p.base_color[:3], DEFAULT_ALBEDO) for (p, _, _, fc), t in zip(parts, textured))
    images, slot = [], []
    for (p, *_), t in zip(parts, textured):
        key = next((k for k, img in enumerate(images) if img is p.texture), None) if t else None
        if t and key is None:
            images.append(p.texture)
            key = len(images) - 1
        slot.append(key)
    if any(textured) and not all(textured):
        images.append(np.full((4, 4, 4), 255, np.uint8))       # white texels under the untextured parts
    texture, place = _pack_atlas(images)
    vertices, faces, uvs, colors, normals, base = [], [], [], [], [], 0
    for (p, sel, f, fc), key, t in zip(parts, slot, textured):
        vertices.append(p.vertices[sel])
        faces.append(f + base)
        base += len(sel)
        c = np.broadcast_to(p.base_color[:3], (len(sel), 3)).astype(np.float32)
        if p.vertex_colors is not None:
            c = c * p.vertex_colors[sel, :3]
        if fc is not None:
            c = c * fc[:, :3]
        colors.append(c)
        normals.append(p.vertex_normals[sel] if p.vertex_normals is not None else None)
        if texture is None:
            uvs.append(None if p.uv is None else np.stack([p.uv[sel, 0], 1.0 - p.uv[sel, 1]], axis=1))
            continue
        x0, y0, w, h = place[key if t else len(images) - 1]
        if t:
            uv = p.uv[sel]
            if len(images) > 1 and (uv.min() < -1e-3 or uv.max() > 1 + 1e-3):
                notes.append(f"part '{p.name}' tiles its texture (UVs outside [0, 1]); the MESH output holds one "
                             "texture atlas, where tiling shows as stretched edges.")
            u, v_top = uv[:, 0], 1.0 - uv[:, 1]
        else:
            u, v_top = np.full(len(sel), 0.5), np.full(len(sel), 0.5)
        uvs.append(np.stack([(x0 + u * w) / texture.shape[1], (y0 + v_top * h) / texture.shape[0]], axis=1))
    out = NativeArrays(np.concatenate(vertices).astype(np.float32), np.concatenate(faces).astype(np.int64),
                       notes=notes)
    if texture is not None or all(u is not None for u in uvs):
        out.uvs = np.concatenate(uvs).astype(np.float32)
    if texture is not None:
        out.texture = texture[..., :3].astype(np.float32) / 255.0
    if coloured and not (texture is not None and all(np.all(c == 1) for c in colors)):
        out.vertex_colors = (np.clip(np.concatenate(colors), 0.0, 1.0) ** NATIVE_GAMMA).astype(np.float32)
    if all(n is not None for n in normals):
        out.normals = np.concatenate(normals).astype(np.float32)
    return out


def _pack_atlas(images: list) -> tuple[Optional[np.ndarray], list]:
    """Textures uint8 [H, W, 4] side by side in one atlas, each inside a gutter of its edge texels:
    (atlas or None, (x0, y0, w, h) of each image's own texels). One image is used as it is."""
    if not images:
        return None, []
    if len(images) == 1:
        h, w = images[0].shape[:2]
        return images[0], [(0, 0, w, h)]
    g = ATLAS_GUTTER
    height = max(img.shape[0] for img in images) + 2 * g
    atlas = np.zeros((height, sum(img.shape[1] + 2 * g for img in images), 4), np.uint8)
    place, x = [], 0
    for img in images:
        h, w = img.shape[:2]
        atlas[:h + 2 * g, x:x + w + 2 * g] = np.pad(img, ((g, g), (g, g), (0, 0)), mode="edge")
        place.append((x + g, g, w, h))
        x += w + 2 * g
    return atlas, place
