"""Bad names through the real server: output prefixes with NUL or control characters, or too
long for the file system, and a NUL or newline in Load Mesh's file name. Each fails with the
pack's error type ("Realiz3D input error") naming the input and the reason, writes nothing, and
the next prompt runs. (Load Mesh validates its mesh_file itself, so on both hosts the node's own
path guard answers, at validation, instead of a host's generic "Value not in list".)"""
import os

import pytest

from comfy_host import error_message
from test_bad_input import graph, output_files

CASES = [
    # (id, graph kwargs, input named in the error, phrase)
    ("NUL in mesh name", dict(mesh_file="3d/mesh\x00.obj"), "mesh_file", "NUL byte"),
    ("newline in mesh name", dict(mesh_file="3d/mesh\n.obj"), "mesh_file", "control characters"),
    ("500-character prefix", dict(save={"filename_prefix": "bad/" + "p" * 500}), "filename_prefix",
     "is too long"),
    ("5000-character prefix in folders", dict(save={"filename_prefix": "/".join(["d" * 100] * 50)}),
     "filename_prefix", "makes a path too long"),
    ("300-character folder name", dict(save={"filename_prefix": "f" * 300 + "/pc"}), "filename_prefix",
     "folder name 1"),
    ("NUL in prefix", dict(save={"filename_prefix": "bad/p\x00c"}), "filename_prefix", "NUL byte"),
    ("newline in prefix", dict(save={"filename_prefix": "bad/p\nc"}), "filename_prefix", "control characters"),
    ("tab in folder of prefix", dict(save={"filename_prefix": "bad\t/pc"}), "filename_prefix",
     "control characters"),
]


@pytest.mark.parametrize("kwargs,input_name,phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_name_is_named_and_harmless(server, kwargs, input_name, phrase):
    out = os.path.join(server.base, "output")
    before = output_files(server)
    dirs_before = sorted(d for d, _, _ in os.walk(out)) if os.path.isdir(out) else []
    reply = server.run(graph(**kwargs))
    assert reply.get("status", {}).get("status_str") == "error" or reply.get("node_errors"), reply
    message = error_message(reply)
    assert message.startswith("Realiz3D input error: "), message        # the pack's type, not a module path
    assert f"{input_name}:" in message and phrase in message, message
    assert "leaves ComfyUI's output folder" not in message, message     # not blamed on the wrong reason
    assert output_files(server) == before                                # nothing written
    assert (sorted(d for d, _, _ in os.walk(out)) if os.path.isdir(out) else []) == dirs_before   # no folders
    ok = server.run(graph(save={"filename_prefix": "bad_names/pc"}))    # the next prompt runs
    assert ok["status"]["status_str"] == "success", error_message(ok)
