"""The workflow of a batch: a file (API or UI format) or a template name, in API format.

API format: ``{node_id: {"class_type", "inputs", "_meta": {"title"}}}``. A UI-format file (what
the front end saves: ``nodes`` and ``links``) is converted with the server's ``/object_info``,
keeping each node's title in ``_meta`` so that ``--set`` can name nodes by it.
"""
from __future__ import annotations

import hashlib
import json
import os

from ..scripts.workflow_format import ui_to_api

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(PACK_ROOT, "example_workflows")
#: UI-only nodes that never reach the server
UI_ONLY = {"Note", "MarkdownNote"}


class WorkflowError(ValueError):
    """A workflow that cannot be used: the message names the file or node."""


def template_names() -> list[str]:
    folder = os.path.join(TEMPLATES, "api")
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".json")) if os.path.isdir(folder) else []


def read_workflow(ref: str) -> dict:
    """The JSON of a workflow file, or of template ``ref`` (``example_workflows/api/<ref>.json``)."""
    path = ref
    if not os.path.isfile(path):
        name = ref[:-5] if ref.endswith(".json") else ref
        path = os.path.join(TEMPLATES, "api", name + ".json")
        if os.sep in ref or "/" in ref or not os.path.isfile(path):
            raise WorkflowError(f"workflow {ref!r}: no such file, and no template of that name "
                                f"(templates: {', '.join(template_names())})")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"workflow {path}: not JSON ({exc.msg}, line {exc.lineno})") from None


def is_ui_format(data: dict) -> bool:
    return isinstance(data.get("nodes"), list) and "links" in data


def to_api(data: dict, object_info: dict | None) -> dict:
    """API format of ``data``: unchanged if it already is (also inside ``{"prompt": ...}``), else
    converted from the UI format with ``object_info`` (needed only then)."""
    if is_ui_format(data):
        if object_info is None:
            raise WorkflowError("a UI-format workflow needs the server's /object_info to convert")
        nodes = []
        for node in data["nodes"]:
            if node.get("type") in UI_ONLY:
                continue
            if node.get("type") not in object_info:
                raise WorkflowError(f"node {node.get('id')} ({node.get('type')}): the server has no such node class")
            if node.get("mode", 0) in (2, 4):
                raise WorkflowError(f"node {node.get('id')} ({node.get('type')}) is muted or bypassed; enable or "
                                    "delete it, or export the workflow in API format")
            nodes.append(node)
        api = ui_to_api(dict(data, nodes=nodes), object_info)
        for node in nodes:
            title = node.get("title") or object_info[node["type"]].get("display_name") or node["type"]
            api[str(node["id"])]["_meta"] = {"title": title}
        return api
    if isinstance(data.get("prompt"), dict):
        data = data["prompt"]
    for nid, node in data.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(f"node {nid!r}: not an API-format node (class_type and inputs); save the workflow "
                                "with 'Export (API)' or as a UI workflow")
    return {str(k): dict(v, inputs=dict(v.get("inputs", {}))) for k, v in data.items()}


def load_workflow(ref: str, object_info: dict | None = None) -> dict:
    return to_api(read_workflow(ref), object_info)


def workflow_hash(api: dict, exclude: tuple[tuple[str, str], ...] = ()) -> str:
    """sha256 of the graph as the server runs it (class and inputs of every node; titles and
    layout do not count), hex. ``exclude``: (node id, input) pairs each item sets, whose values
    in the file do not matter."""
    skip = set(exclude)
    graph = {nid: {"class_type": n["class_type"],
                   "inputs": {k: v for k, v in n.get("inputs", {}).items() if (nid, k) not in skip}}
             for nid, n in api.items()}
    return hashlib.sha256(json.dumps(graph, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
