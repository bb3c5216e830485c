"""Converting between ComfyUI's two workflow formats, using the server's /object_info.

API format: {node_id: {"class_type", "inputs": {name: value | [src_id, slot]}}}.
UI format (litegraph, version 0.4): nodes with socket inputs/outputs, widgets_values in the
order of the node's widget inputs, and a links table. Example workflows are written in API
format (reviewable) and turned into the UI format the template browser opens by
scripts/make_ui_workflows.py; the end-to-end tests convert back and compare.
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
#: inputs the front end gives a 'control after generate' widget by their name alone
CONTROLLED_NAMES = ("seed", "noise_seed")


def _inputs(info: dict) -> list[tuple[str, str, bool, bool]]:
    """(name, type, is_widget, has_control) of a node's inputs in schema order (required, then
    optional). has_control: the front end adds a 'control after generate' widget right after it
    (asked for by the schema, or for a number or combo named seed / noise_seed), whose value
    ('fixed', 'randomize', ...) sits in widgets_values too."""
    out = []
    for name, kind, opts in _specs(info):
        is_widget = kind in WIDGET_TYPES
        control = bool(opts.get("control_after_generate")) or (name in CONTROLLED_NAMES
                                                                and kind in ("INT", "FLOAT", "COMBO"))
        out.append((name, kind, is_widget, is_widget and control))
    return out


def _specs(info: dict) -> list[tuple[str, str, dict]]:
    """(name, type, options) of a node's inputs in schema order; type 'COMBO' for a dropdown."""
    out = []
    order = info.get("input_order", {})
    for group in ("required", "optional"):
        spec = info["input"].get(group, {})
        for name in order.get(group, list(spec)):
            kind = spec[name][0]
            opts = spec[name][1] if len(spec[name]) > 1 and isinstance(spec[name][1], dict) else {}
            if isinstance(kind, list):
                kind, opts = "COMBO", {**opts, "options": kind}
            out.append((name, kind, opts))
    return out


def _default(kind: str, opts: dict):
    """The value the front end gives a widget the workflow does not set."""
    if "default" in opts:
        return opts["default"]
    if kind == "COMBO":
        return (opts.get("options") or [""])[0]
    return {"INT": opts.get("min", 0), "FLOAT": opts.get("min", 0.0), "STRING": "", "BOOLEAN": False}[kind]


def with_defaults(api: dict, object_info: dict) -> dict:
    """``api`` with every widget input it leaves unset (optional ones, inputs added to a node
    after the workflow was written) set to the node's default, as the front end shows it."""
    out = {}
    for nid, node in api.items():
        inputs = dict(node["inputs"])
        for name, kind, opts in _specs(object_info[node["class_type"]]):
            if kind in WIDGET_TYPES and name not in inputs:
                inputs[name] = _default(kind, opts)
        out[nid] = {**node, "inputs": inputs}
    return out


def _size(info: dict, inputs: dict) -> list[int]:
    """[width, height] a node needs in the front end (litegraph): a title bar, one row per socket
    pair, one per widget, more for multiline text; generous, so no node covers the next."""
    specs = _inputs(info)
    sockets = sum(1 for name, _, is_widget, _ in specs if not is_widget or isinstance(inputs.get(name), list))
    widgets = sum(1 + control for name, _, is_widget, control in specs
                  if is_widget and not isinstance(inputs.get(name), list))
    multiline = sum(1 for name, kind, opts in _specs(info) if kind == "STRING" and opts.get("multiline")
                    and not isinstance(inputs.get(name), list))
    rows = max(sockets, len(info["output"]))
    return [340, 46 + 22 * rows + 26 * widgets + 90 * multiline]


def api_to_ui(api: dict, object_info: dict, column_width: int = 400, gap: int = 40) -> dict:
    """The UI-format workflow of ``api`` (unset widgets at their defaults, seeds 'fixed'), its
    nodes in columns by depth in the graph, stacked by their size."""
    api = with_defaults(api, object_info)
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
        size = _size(info, node["inputs"])
        top = rows.get(col, 40)
        rows[col] = top + size[1] + gap
        ui = {"id": ids[nid], "type": node["class_type"], "pos": [40 + col * column_width, top],
              "size": size, "flags": {}, "order": len(nodes), "mode": 0, "inputs": [], "outputs": [],
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


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _options(spec: list):
    """A COMBO input's option list (old style [[options], {...}] or V3 ["COMBO", {"options": [...]}]),
    else None."""
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return (spec[1] if len(spec) > 1 else {}).get("options", [])
    return None


def check_api_workflow(api: dict, object_info: dict) -> list[str]:
    """What the host would refuse in the API graph ``api`` before running it, as in ComfyUI's
    prompt validation (0.33 checks every COMBO value, 0.3.75 only the classic ones): a node class the
    host lacks, a required input missing, an input the node does not have, a COMBO value not in its
    option list (e.g. a model file the user does not have), an INT/FLOAT outside its min/max, a link
    to a missing node or output slot, or a link whose type the input does not accept. Returns one
    line per problem (an empty list: the graph validates)."""
    problems = []
    for nid, node in api.items():
        cls = node.get("class_type")
        if cls not in object_info:
            problems.append(f"node {nid}: class {cls!r} is not installed")
            continue
        info = object_info[cls]
        required = info["input"].get("required", {})
        specs = {**required, **info["input"].get("optional", {})}
        inputs = node.get("inputs", {})
        for name in required:
            if name not in inputs:
                problems.append(f"node {nid} ({cls}): required input {name!r} missing")
        for name, value in inputs.items():
            where = f"node {nid} ({cls}).{name}"
            if name not in specs:
                problems.append(f"{where}: the node has no such input")
                continue
            spec = specs[name]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if _is_link(value):
                src = api.get(value[0])
                if src is None or src.get("class_type") not in object_info:
                    problems.append(f"{where}: links to missing node {value[0]!r}")
                    continue
                outputs = object_info[src["class_type"]]["output"]
                if not 0 <= value[1] < len(outputs):
                    problems.append(f"{where}: node {value[0]} has no output {value[1]}")
                    continue
                accepted = spec[0]
                if isinstance(accepted, list) or accepted in WIDGET_TYPES:
                    continue                  # a widget fed by a link: its type is checked at run time
                have = set(str(outputs[value[1]]).split(","))
                want = set(str(accepted).split(","))
                if "*" not in have | want and not have & want:
                    problems.append(f"{where}: takes {accepted}, linked to {outputs[value[1]]} "
                                    f"(node {value[0]} output {value[1]})")
                continue
            options = _options(spec)
            if options is not None:
                if value not in options:
                    problems.append(f"{where}: value {value!r} not in {options}")
            elif spec[0] in ("INT", "FLOAT"):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    problems.append(f"{where}: {value!r} is not a number")
                elif "min" in opts and value < opts["min"]:
                    problems.append(f"{where}: {value} smaller than min {opts['min']}")
                elif "max" in opts and value > opts["max"]:
                    problems.append(f"{where}: {value} bigger than max {opts['max']}")
    return problems
