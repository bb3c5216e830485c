"""realiz3d.batch.mapping and .workflow: columns onto node inputs by id, title, display name or
class; errors that name the node, input or column; the workflow hash."""
import pytest

from realiz3d.batch.mapping import (MappingError, Target, apply_item, coerce, parse_param, parse_set, resolve_node,
                                    resolve_target, resolve_targets)
from realiz3d.batch.workflow import WorkflowError, load_workflow, to_api, workflow_hash

INFO = {
    "Realiz3DLoadMesh": {"display_name": "Load Mesh (Realiz3D)", "input": {
        "required": {"normalize": ["BOOLEAN", {}], "mesh_file": ["COMBO", {"options": ["a.glb"]}]},
        "optional": {"mesh": ["MESH", {}]}}},
    "CLIPTextEncode": {"display_name": "CLIP Text Encode (Prompt)", "input": {
        "required": {"text": ["STRING", {}], "clip": ["CLIP", {}]}}},
    "KSampler": {"display_name": "KSampler", "input": {
        "required": {"seed": ["INT", {}], "cfg": ["FLOAT", {}], "sampler_name": [["euler", "dpm"], {}],
                     "model": ["MODEL", {}]}}},
}
WF = {
    "1": {"class_type": "Realiz3DLoadMesh", "inputs": {"normalize": True, "mesh_file": "a.glb"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["4", 1]}, "_meta": {"title": "Positive"}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "y", "clip": ["4", 1]}, "_meta": {"title": "Negative"}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 0, "cfg": 7.0, "sampler_name": "euler", "model": ["4", 0]}},
}


def test_parse_set_and_param():
    assert parse_set("mesh=Load Mesh (Realiz3D).mesh_file") == ("mesh", "Load Mesh (Realiz3D)", "mesh_file")
    assert parse_set(" prompt = 6.text ") == ("prompt", "6", "text")
    assert parse_set("x=Some.Node.v2.seed") == ("x", "Some.Node.v2", "seed")     # dots in a title
    assert parse_param("3.cfg=4.5") == ("3", "cfg", 4.5)
    assert parse_param("6.text=a=b") == ("6", "text", "a=b")
    for bad in ("mesh", "mesh=6", "=6.text", "mesh=.text"):
        with pytest.raises(MappingError, match="COLUMN=NODE.INPUT"):
            parse_set(bad)
    with pytest.raises(MappingError, match="NODE.INPUT=VALUE"):
        parse_param("3.cfg")


def test_nodes_by_id_title_display_name_and_class():
    assert resolve_node(WF, "6", INFO) == "6"
    assert resolve_node(WF, "Negative", INFO) == "7"
    assert resolve_node(WF, "Load Mesh (Realiz3D)", INFO) == "1"
    assert resolve_node(WF, "KSampler", INFO) == "3"
    assert resolve_node(WF, "Realiz3DLoadMesh", INFO) == "1"


def test_unknown_and_ambiguous_nodes_are_named():
    with pytest.raises(MappingError) as e:
        resolve_node(WF, "Load Mesh", INFO)
    assert "node 'Load Mesh' is not in the workflow" in str(e.value)
    assert "1 (Load Mesh (Realiz3D))" in str(e.value) and "6 (Positive)" in str(e.value)
    with pytest.raises(MappingError, match=r"node 'CLIPTextEncode': 2 nodes have this class \(ids 6, 7\)"):
        resolve_node(WF, "CLIPTextEncode", INFO)


def test_unknown_or_linked_inputs_are_named():
    with pytest.raises(MappingError) as e:
        resolve_target(WF, "KSampler", "sed", INFO)
    assert "node 'KSampler' (id 3, KSampler) has no input 'sed'" in str(e.value)
    assert "seed, cfg, sampler_name, model" in str(e.value)
    with pytest.raises(MappingError, match="input 'clip' is connected to node 4"):
        resolve_target(WF, "Positive", "clip", INFO)
    # without /object_info the node's own inputs are the list
    with pytest.raises(MappingError, match="has no input 'steps'"):
        resolve_target(WF, "3", "steps")


def test_targets_check_the_manifest_columns():
    t = resolve_targets(["mesh=Load Mesh (Realiz3D).mesh_file", "seed=3.seed", "seed=KSampler.cfg"], WF, INFO,
                        ["mesh", "seed"])
    assert t == {"mesh": [Target("1", "mesh_file", "COMBO")],
                 "seed": [Target("3", "seed", "INT"), Target("3", "cfg", "FLOAT")]}
    with pytest.raises(MappingError, match=r"no column 'prompt'; its columns: mesh, seed"):
        resolve_targets(["prompt=6.text"], WF, INFO, ["mesh", "seed"])


def test_values_take_the_inputs_type():
    seed, cfg = Target("3", "seed", "INT"), Target("3", "cfg", "FLOAT")
    flag, text = Target("1", "normalize", "BOOLEAN"), Target("6", "text", "STRING")
    assert coerce("12", seed) == 12 and coerce(3.0, seed) == 3
    assert coerce("2.5", cfg) == 2.5 and coerce(2, cfg) == 2.0
    assert coerce("yes", flag) is True and coerce("0", flag) is False
    assert coerce(7, text) == "7"
    for value, target in (("1.5", seed), (1.5, seed), (True, seed), ("x", cfg), ("maybe", flag)):
        with pytest.raises(MappingError, match=r"column 'seed' -> \d\.\w+: .* is not a valid (INT|FLOAT|BOOLEAN)"):
            coerce(value, target, "seed")


def test_apply_item_copies():
    wf = apply_item(WF, {Target("3", "seed", "INT"): 5})
    assert wf["3"]["inputs"]["seed"] == 5 and WF["3"]["inputs"]["seed"] == 0


def test_workflow_hash_ignores_titles_and_mapped_inputs():
    h = workflow_hash(WF)
    titled = {k: dict(v, _meta={"title": "other"}) for k, v in WF.items()}
    assert workflow_hash(titled) == h
    changed = apply_item(WF, {Target("3", "cfg", "FLOAT"): 1.0})
    assert workflow_hash(changed) != h
    seeded = apply_item(WF, {Target("3", "seed", "INT"): 99})
    assert workflow_hash(seeded, exclude=(("3", "seed"),)) == workflow_hash(WF, exclude=(("3", "seed"),))


def test_templates_and_formats():
    api = load_workflow("render_sample_mesh")
    assert api["1"]["class_type"] == "Realiz3DLoadMesh"
    with pytest.raises(WorkflowError, match="no template of that name .*render_sample_mesh"):
        load_workflow("no_such_template")
    assert to_api({"prompt": WF}, None) == WF
    with pytest.raises(WorkflowError, match="not an API-format node"):
        to_api({"1": {"inputs": {}}}, None)
    with pytest.raises(WorkflowError, match="needs the server's /object_info"):
        to_api({"nodes": [], "links": []}, None)
