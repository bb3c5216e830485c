"""Converting between ComfyUI's two workflow formats, using the server's /object_info.

API format: {node_id: {"class_type", "inputs": {name: value | [src_id, slot]}}}.
UI format (litegraph, version 0.4): nodes with socket inputs/outputs, widgets_values in the
order of the node's widget inputs, and a links table. Example workflows are written in API
format (reviewable) and turned into the UI format the template browser opens by
scripts/make_ui_workflows.py; the end-to-end tests convert back and compare.
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _inputs(info: dict) -> list[tuple[str, str, bool, bool]]:
    """(name, type, is_widget, has_control) of a node's inputs in schema order (required, then
    optional). has_control: the front end adds a 'control after generate' widget right after it,
    whose value ('fixed', 'randomize', ...) sits in widgets_values too."""
    out = []
    order = info.get("input_order", {})
    for group in ("required", "optional"):
        spec = info["input"].get(group, {})
        for name in order.get(group, list(spec)):
            kind = spec[name][0]
            opts = spec[name][1] if len(spec[name]) > 1 else {}
            is_widget = isinstance(kind, list) or kind in WIDGET_TYPES
            out.append((name, "COMBO" if isinstance(kind, list) else kind, is_widget,
                        bool(opts.get("control_after_generate"))))
    return out


def api_to_ui(api: dict, object_info: dict, column_width: int = 380) -> dict:
    ids = {nid: int(nid) for nid in api}
    depth = {}

    def level(nid):
        if nid not in depth:
            srcs = [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list)]
            depth[nid] = 1 + max((level(s) for s in srcs), default=-1)
        return depth[nid]

    links, nodes, rows = [], {}, {}
    for nid in sorted(api, key=lambda n: (level(n), ids[n])):
        node, info = api[nid], object_info[api[nid]["class_type"]]
        col = level(nid)
        row = rows.get(col, 0)
        rows[col] = row + 1
        ui = {"id": ids[nid], "type": node["class_type"], "pos": [40 + col * column_width, 40 + row * 320],
              "size": [340, 260], "flags": {}, "order": len(nodes), "mode": 0, "inputs": [], "outputs": [],
              "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": []}
        for name, kind, is_widget, has_control in _inputs(info):
            value = node["inputs"].get(name)
            if is_widget and not isinstance(value, list):
                if name in node["inputs"]:
                    ui["widgets_values"].append(value)
                    if has_control:
                        ui["widgets_values"].append("fixed")   # a shared workflow reproduces its seed
                continue
            entry = {"name": name, "type": kind, "link": None}
            if isinstance(value, list):
                link_id = len(links) + 1
                src, slot = value
                links.append([link_id, ids[src], slot, ids[nid], len(ui["inputs"]),
                              object_info[api[src]["class_type"]]["output"][slot]])
                entry["link"] = link_id
            ui["inputs"].append(entry)
        for slot, (kind, name) in enumerate(zip(info["output"], info["output_name"])):
            ui["outputs"].append({"name": name, "type": kind, "links": [], "slot_index": slot})
        nodes[nid] = ui
    for link_id, src, slot, _, _, _ in links:
        nodes[str(src)]["outputs"][slot]["links"].append(link_id)
    return {"last_node_id": max(ids.values()), "last_link_id": len(links), "nodes": list(nodes.values()),
            "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}},
            "version": 0.4}


def ui_to_api(ui: dict, object_info: dict) -> dict:
    link_src = {l[0]: (str(l[1]), l[2]) for l in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        info = object_info[node["type"]]
        values = list(node.get("widgets_values", []))
        linked = {i["name"]: link_src[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        inputs = {}
        for name, _, is_widget, has_control in _inputs(info):
            if name in linked:
                inputs[name] = list(linked[name])
            elif is_widget and values:
                inputs[name] = values.pop(0)
                if has_control and values:
                    values.pop(0)
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api
