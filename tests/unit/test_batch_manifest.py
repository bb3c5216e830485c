"""realiz3d.batch.manifest: CSV, JSONL, meshes x prompts x seeds, and the errors that name the line."""
import json

import pytest

from realiz3d.batch.manifest import (MESH_EXTENSIONS, ManifestError, cross_product, expand_meshes, parse_seeds,
                                     read_manifest)
from realiz3d.renderers import MESH_EXTENSIONS as RENDERER_EXTENSIONS


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_csv_rows_in_order_with_header_names(tmp_path):
    m = read_manifest(write(tmp_path / "m.csv", "mesh,prompt,seed\na.glb,\"a chair, red\",1\n\nb.obj,lamp,2\n"))
    assert m.columns == ["mesh", "prompt", "seed"]
    assert [i.values for i in m.items] == [{"mesh": "a.glb", "prompt": "a chair, red", "seed": "1"},
                                           {"mesh": "b.obj", "prompt": "lamp", "seed": "2"}]
    assert [i.index for i in m.items] == [0, 1]
    assert m.base_dir == str(tmp_path)                   # relative files are read from the manifest's folder


def test_csv_errors_name_the_line(tmp_path):
    with pytest.raises(ManifestError, match=r"line 3: 1 values for 2 columns"):
        read_manifest(write(tmp_path / "m.csv", "mesh,seed\na.glb,1\nb.glb\n"))
    with pytest.raises(ManifestError, match="distinct"):
        read_manifest(write(tmp_path / "d.csv", "seed,seed\n1,2\n"))
    with pytest.raises(ManifestError, match="no items"):
        read_manifest(write(tmp_path / "e.csv", "seed\n"))


def test_jsonl_keeps_json_types_and_names_bad_lines(tmp_path):
    rows = [{"mesh": "a.glb", "seed": 3, "cfg": 1.5}, {"mesh": "b.glb", "seed": 4, "extra": True}]
    m = read_manifest(write(tmp_path / "m.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n"))
    assert [i.values for i in m.items] == rows
    assert m.columns == ["mesh", "seed", "cfg", "extra"]
    with pytest.raises(ManifestError, match=r"line 2: not JSON"):
        read_manifest(write(tmp_path / "bad.jsonl", '{"a": 1}\n{"a": \n'))
    with pytest.raises(ManifestError, match=r"line 1: each line must be a JSON object"):
        read_manifest(write(tmp_path / "list.jsonl", "[1, 2]\n"))
    with pytest.raises(ManifestError, match=r"\.csv .* or \.jsonl"):
        read_manifest(write(tmp_path / "m.txt", "x"))


def test_cross_product_first_column_slowest():
    m = cross_product({"mesh": ["a", "b"], "prompt": ["p", "q"], "seed": [0, 1], "unused": []})
    assert m.columns == ["mesh", "prompt", "seed"]
    assert len(m.items) == 8
    assert m.items[0].values == {"mesh": "a", "prompt": "p", "seed": 0}
    assert m.items[1].values == {"mesh": "a", "prompt": "p", "seed": 1}
    assert m.items[-1].values == {"mesh": "b", "prompt": "q", "seed": 1}
    with pytest.raises(ManifestError, match="nothing to combine"):
        cross_product({"mesh": []})


def test_meshes_from_a_folder_or_glob(tmp_path):
    for name in ("b.glb", "a.OBJ", "notes.txt", "sub/c.ply"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.split("/")[-1] for p in expand_meshes(str(tmp_path))] == ["a.OBJ", "b.glb"]
    assert [p.split("/")[-1] for p in expand_meshes(str(tmp_path / "**" / "*.ply"))] == ["c.ply"]
    with pytest.raises(ManifestError, match="matches no mesh"):
        expand_meshes(str(tmp_path / "*.stl"))
    assert MESH_EXTENSIONS == RENDERER_EXTENSIONS        # the runner's copy of the renderer's list


def test_seed_lists_and_ranges():
    assert parse_seeds("0,1, 5-7") == [0, 1, 5, 6, 7]
    assert parse_seeds("3") == [3]
    with pytest.raises(ManifestError, match="'x' is not a whole number"):
        parse_seeds("1,x")
