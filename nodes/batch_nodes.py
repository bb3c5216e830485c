"""Load Mesh Folder: every mesh of an input subfolder as a list, so one prompt processes them all.

ComfyUI runs the nodes downstream of a list output once per element (its list execution), so
Load Mesh Folder -> Render Views -> Save Image saves one render per mesh. Each mesh is loaded
by Load Mesh itself (same formats, same checks on the files it refers to, same normalisation).
"""
from __future__ import annotations

import os
import re

import folder_paths
from comfy_api.latest import io

from ..renderers import MESH_EXTENSIONS
from ..renderers.errors import InputError
from .common import CATEGORY, PREFIX, MeshType, progress
from .mesh_nodes import LoadMesh
from .paths import choices_valid, list_files, resolve_inside

#: the dropdown's only entry while no subfolder of input/ holds a mesh
NO_FOLDER = "(no subfolder of input/ holds a mesh)"


def mesh_folders(root: str) -> list[str]:
    """Subfolders of ``root`` ('/'-separated, relative) that hold at least one mesh file,
    directly or further down; the folders above a mesh are listed too."""
    folders = set()
    for rel in list_files(root, MESH_EXTENSIONS):
        parts = rel.split("/")[:-1]
        folders.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return sorted(folders)


def glob_pattern(pattern: str) -> re.Pattern:
    """A path glob as a regex: '*' and '?' stay within one folder, '**/' spans any number of them,
    '[abc]' / '[!abc]' are character classes."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        c = pattern[i]
        end = pattern.find("]", i + 2) if c == "[" else -1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif end > 0:
            body = pattern[i + 1:end]
            body = body.replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body.replace("^", "\\^")) + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def folder_meshes(root: str, subfolder: str, pattern: str) -> list[str]:
    """Mesh files of ``root/subfolder`` whose path inside the subfolder matches ``pattern``
    (:func:`glob_pattern`), as names relative to ``root``, sorted. InputError naming
    ``subfolder`` (outside ``root``, not a folder) or ``pattern`` (matches no mesh)."""
    if subfolder == NO_FOLDER:
        raise InputError("subfolder", "no subfolder of ComfyUI's input folder holds a mesh; put the meshes in "
                                      "one (e.g. input/meshes/) and pick it.")
    folder = resolve_inside(root, subfolder, "subfolder")
    if not os.path.isdir(folder):
        raise InputError("subfolder", f"'{subfolder}' is not a folder in ComfyUI's input folder; pick one from "
                                      "the list.")
    if not pattern or not pattern.strip():
        raise InputError("pattern", "is empty; use '*' for every mesh of the folder.")
    match = glob_pattern(pattern.strip()).match
    found = [rel for rel in list_files(folder, MESH_EXTENSIONS) if match(rel)]
    if not found:
        raise InputError("pattern", f"'{pattern}' matches no mesh ({', '.join(MESH_EXTENSIONS)}) in "
                                    f"input/{subfolder}.")
    prefix = os.path.relpath(folder, os.path.realpath(root)).replace(os.sep, "/")
    return [f"{prefix}/{rel}" for rel in found]


class LoadMeshFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        folders = mesh_folders(folder_paths.get_input_directory()) or [NO_FOLDER]
        return io.Schema(
            node_id=f"{PREFIX}LoadMeshFolder",
            display_name="Load Mesh Folder (Realiz3D)",
            category=f"{CATEGORY}/render",
            description="Loads every mesh of a subfolder of ComfyUI's input folder as a list: the nodes after it "
                        "run once per mesh, in one prompt.",
            inputs=[
                io.Combo.Input("subfolder", options=folders, default=folders[0],
                               tooltip="A subfolder of ComfyUI's input folder holding meshes (GLB, GLTF, OBJ, PLY, "
                                       "STL), e.g. 'meshes' for input/meshes."),
                io.String.Input("pattern", default="*",
                                tooltip="Which files of the subfolder: a glob on their path inside it, e.g. '*.glb', "
                                        "'chairs/*', or '**/*' for the nested folders too ('*' stays in one "
                                        "folder). Sorted by name."),
                io.Boolean.Input("normalize", default=True,
                                 tooltip="As in Load Mesh: centre each mesh and scale its longest side to span "
                                         "[-1, 1], the frame the camera rigs assume."),
            ],
            outputs=[MeshType.Output(display_name="mesh", is_output_list=True),
                     io.Mesh.Output(display_name="MESH", is_output_list=True),
                     io.String.Output(display_name="name", is_output_list=True,
                                      tooltip="Each mesh's path inside the input folder without its extension, e.g. "
                                              "for a Save node's filename_prefix."),
                     io.String.Output(display_name="notes", is_output_list=True,
                                      tooltip="Load Mesh's notes for each mesh (empty when all went well).")],
        )

    @classmethod
    def validate_inputs(cls, subfolder: str = None, pattern: str = None) -> bool | str:
        # the pack's own message for a bad folder (0.33 would answer a generic "Value not in list"),
        # and a folder made after the page loaded is accepted
        root = folder_paths.get_input_directory()
        glob = pattern if isinstance(pattern, str) else "*"        # a linked pattern is known only at run time
        return choices_valid(lambda value, _: folder_meshes(root, value, glob), {"subfolder": subfolder})

    @classmethod
    def execute(cls, subfolder: str, pattern: str, normalize: bool) -> io.NodeOutput:
        names = folder_meshes(folder_paths.get_input_directory(), subfolder, pattern)
        outputs = [[], [], [], []]
        update = progress(len(names))
        for i, name in enumerate(names):
            mesh, native, notes = LoadMesh.execute(normalize=normalize, mesh_file=name).args
            for column, value in zip(outputs, (mesh, native, os.path.splitext(name)[0], notes)):
                column.append(value)
            update(i + 1, len(names))
        return io.NodeOutput(*outputs)

    @classmethod
    def fingerprint_inputs(cls, subfolder, pattern, normalize):
        # re-run when a file of the folder is added, removed or changed
        root = folder_paths.get_input_directory()
        try:
            names = folder_meshes(root, subfolder, pattern)
            return tuple((n, os.path.getmtime(os.path.join(root, n))) for n in names)
        except Exception:
            return float("nan")
