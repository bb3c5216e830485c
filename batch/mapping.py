"""Manifest columns onto node inputs: ``--set COLUMN=NODE.INPUT`` and ``--param NODE.INPUT=VALUE``.

``NODE`` is, in this order of preference: a node id (``6``), a node title (``_meta.title``, what
the front end shows, e.g. ``Load Mesh (Realiz3D)``), a class's display name, or a class name
(``Realiz3DLoadMesh``). A name that fits several nodes at the same level is refused with their
ids. ``INPUT`` is an input of that node's class (checked against the server's ``/object_info``).
Values are converted to the input's type (INT, FLOAT, BOOLEAN; the rest stay strings).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass


class MappingError(ValueError):
    """A mapping that does not fit the workflow: the message names the node, input or column."""


@dataclass(frozen=True)
class Target:
    """Input ``input`` of node ``node_id``; ``kind``: the input's type (INT, FLOAT, BOOLEAN,
    STRING, COMBO, or '' when unknown)."""
    node_id: str
    input: str
    kind: str = ""

    def __str__(self) -> str:
        return f"{self.node_id}.{self.input}"


def parse_set(spec: str) -> tuple[str, str, str]:
    """``"mesh=Load Mesh (Realiz3D).mesh_file"`` -> ("mesh", "Load Mesh (Realiz3D)", "mesh_file")."""
    column, sep, target = spec.partition("=")
    node, dot, name = target.rpartition(".")
    if not sep or not column.strip() or not dot or not node.strip() or not name.strip():
        raise MappingError(f"--set {spec!r}: write COLUMN=NODE.INPUT, e.g. prompt=6.text or "
                           "mesh=Load Mesh (Realiz3D).mesh_file")
    return column.strip(), node.strip(), name.strip()


def parse_param(spec: str) -> tuple[str, str, object]:
    """``"4.steps=2"`` -> ("4", "steps", 2): a value for every item (JSON if it parses, else text)."""
    target, sep, text = spec.partition("=")
    node, dot, name = target.rpartition(".")
    if not sep or not dot or not node.strip() or not name.strip():
        raise MappingError(f"--param {spec!r}: write NODE.INPUT=VALUE, e.g. 4.steps=2")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    return node.strip(), name.strip(), value


def _title(node: dict) -> str:
    return (node.get("_meta") or {}).get("title", "")


def resolve_node(workflow: dict, ref: str, object_info: dict | None = None) -> str:
    """The id of the node ``ref`` names (id, title, display name, class); MappingError otherwise."""
    if ref in workflow:
        return ref
    info = object_info or {}
    levels = [
        ("title", [nid for nid, n in workflow.items() if _title(n) == ref]),
        ("display name", [nid for nid, n in workflow.items()
                          if info.get(n["class_type"], {}).get("display_name") == ref]),
        ("class", [nid for nid, n in workflow.items() if n["class_type"] == ref]),
    ]
    for what, found in levels:
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise MappingError(f"node {ref!r}: {len(found)} nodes have this {what} (ids {', '.join(found)}); "
                               "name one by its id")
    listing = ", ".join(f"{nid} ({_title(n) or info.get(n['class_type'], {}).get('display_name') or n['class_type']})"
                        for nid, n in workflow.items())
    raise MappingError(f"node {ref!r} is not in the workflow (by id, title, display name or class); "
                       f"its nodes: {listing}")


def _input_kind(spec) -> str:
    kind = spec[0]
    if isinstance(kind, list) or kind == "COMBO":
        return "COMBO"
    return str(kind)


def resolve_target(workflow: dict, ref: str, name: str, object_info: dict | None = None) -> Target:
    """Target for input ``name`` of node ``ref``; MappingError naming both when the node has no
    such input, or when the input is fed by a link (a value would cut the graph)."""
    nid = resolve_node(workflow, ref, object_info)
    node = workflow[nid]
    info = (object_info or {}).get(node["class_type"])
    if info is not None:
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    else:
        specs = {k: [""] for k in node.get("inputs", {})}
    shown = f"node {ref!r}" + (f" (id {nid}, {node['class_type']})" if ref != nid else f" ({node['class_type']})")
    if name not in specs:
        raise MappingError(f"{shown} has no input {name!r}; its inputs: {', '.join(specs) or '(none)'}")
    value = node.get("inputs", {}).get(name)
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
        raise MappingError(f"{shown}: input {name!r} is connected to node {value[0]}; map a widget input "
                           "(or the input of the node it comes from)")
    return Target(nid, name, _input_kind(specs[name]) if specs[name][0] else "")


def resolve_targets(specs: list[str], workflow: dict, object_info: dict | None = None,
                    columns: list[str] | None = None) -> dict[str, list[Target]]:
    """``--set`` specs -> column -> targets (a column may feed several inputs). With ``columns``
    (the manifest's), a column it lacks is refused, naming the columns it has."""
    out: dict[str, list[Target]] = {}
    for spec in specs:
        column, ref, name = parse_set(spec)
        if columns is not None and column not in columns:
            raise MappingError(f"--set {spec!r}: the manifest has no column {column!r}; its columns: "
                               f"{', '.join(columns)}")
        out.setdefault(column, []).append(resolve_target(workflow, ref, name, object_info))
    return out


def coerce(value, target: Target, column: str = ""):
    """``value`` as ``target``'s input type takes it; MappingError naming the column otherwise."""
    where = f"column {column!r} -> {target}" if column else str(target)
    kind = target.kind
    try:
        if kind == "INT":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            return int(str(value).strip())
        if kind == "FLOAT":
            if isinstance(value, bool):
                raise ValueError
            return float(str(value).strip()) if isinstance(value, str) else float(value)
        if kind == "BOOLEAN":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes"):
                return True
            if text in ("false", "0", "no"):
                return False
            raise ValueError
    except (TypeError, ValueError):
        raise MappingError(f"{where}: {value!r} is not a valid {kind}") from None
    if kind in ("STRING", "COMBO") and not isinstance(value, str):
        return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return value


def apply_item(workflow: dict, values: dict[Target, object]) -> dict:
    """A copy of ``workflow`` with each target input set to its (already converted) value."""
    wf = copy.deepcopy(workflow)
    for target, value in values.items():
        wf[target.node_id]["inputs"][target.input] = value
    return wf
