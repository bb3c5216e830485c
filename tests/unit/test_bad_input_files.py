"""Bad input files and names refused by name, in the library (the e2e tests take the same cases
through the server): the error type users see, LoRAs whose ranks disagree, damaged shifter
metadata, diffusers folders that are not Flux, names with NUL / control characters or too long,
and the domain embedder's key message."""
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from realiz3d.adapters import DomainShifters, ShifterConfig, load_shifters, save_shifters
from realiz3d.engine.lora_files import LoraState, check_lora_pairs
from realiz3d.loading.flux_files import load_pipeline_folder
from realiz3d.nodes.paths import check_name_chars, check_name_length, resolve_inside
from realiz3d.refany3d.domain_embedder import load_domain_embedder
from realiz3d.renderers import InputError


def test_input_error_reads_as_the_packs_and_still_behaves():
    e = InputError("width", "must be a multiple of 16.")
    # ComfyUI's full_type_name: module + '.' + qualname, module left out for builtins
    shown = e.__class__.__qualname__ if e.__class__.__module__ == "builtins" else None
    assert shown == "Realiz3D input error"
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is InputError and again.input_name == "width" and str(again) == str(e)
    with pytest.raises(ValueError):
        raise again
    import traceback
    assert traceback.format_exception_only(e)[-1].startswith("Realiz3D input error: width:")


def lora(rank_a=4, rank_b=4, metadata=None):
    state = LoraState({"transformer.x_embedder.lora_A.weight": torch.zeros(rank_a, 8),
                       "transformer.x_embedder.lora_B.weight": torch.zeros(16, rank_b)})
    state.metadata = metadata
    return state


def test_lora_ranks_that_disagree_are_named():
    check_lora_pairs(lora(), "ok.safetensors", "lora")
    with pytest.raises(InputError, match=r"reference_lora: 'bad.safetensors': layer 'x_embedder'.*ranks disagree"):
        check_lora_pairs(lora(rank_b=3), "bad.safetensors", "reference_lora")
    with pytest.raises(InputError, match="metadata says rank 8"):
        check_lora_pairs(lora(metadata={"transformer.r": 8}), "meta.safetensors", "lora")
    half = lora()
    del half["transformer.x_embedder.lora_B.weight"]
    with pytest.raises(InputError, match="only one of lora_A / lora_B"):
        check_lora_pairs(half, "half.safetensors", "target_lora")


def shifter_file(tmp_path, config):
    good = tmp_path / "good.safetensors"
    save_shifters(DomainShifters(ShifterConfig(2, 2, 32, rank=2, embed_dim=4)), str(good))
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
    meta["config"] = config(meta["config"])
    path = tmp_path / "bad.safetensors"
    save_file(load_file(str(good)), str(path), metadata=meta)
    return str(path)


@pytest.mark.parametrize("config,phrase", [
    (lambda c: json.dumps({**json.loads(c), "dropout": 0.1}), r"keys this pack does not know \(\['dropout'\]"),
    (lambda c: c[:-5], "not valid JSON"),
    (lambda c: "[1, 2]", "not a JSON object"),
    (lambda c: json.dumps({**json.loads(c), "rank": "two"}), "cannot build shifters"),
])
def test_damaged_shifter_metadata_is_named(tmp_path, config, phrase):
    with pytest.raises(InputError, match=phrase) as info:
        load_shifters(shifter_file(tmp_path, config), "shifter")
    assert info.value.input_name == "shifter"


@pytest.mark.parametrize("index,phrase", [
    ("{not json", "model_index.json is not valid JSON"),
    (json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}),
     "is a StableDiffusionPipeline folder, not a Flux one"),
    (json.dumps({"_class_name": "FluxPipeline", "transformer": ["diffusers", "SD3Transformer2DModel"]}),
     "names 'SD3Transformer2DModel' for transformer"),
])
def test_diffusers_folder_that_is_not_flux_is_named(tmp_path, index, phrase):
    (tmp_path / "model_index.json").write_text(index)
    with pytest.raises(InputError, match=phrase) as info:
        load_pipeline_folder(str(tmp_path), input_name="diffusers_model")
    assert info.value.input_name == "diffusers_model"


@pytest.mark.parametrize("name,phrase", [("a\x00b", "NUL byte"), ("a\nb", "control characters"),
                                         ("a\tb", "control characters"), ("a\x7fb", "control characters")])
def test_nul_and_control_characters_are_named(tmp_path, name, phrase):
    with pytest.raises(InputError, match=phrase):
        check_name_chars(name, "filename_prefix")
    with pytest.raises(InputError, match=phrase) as info:
        resolve_inside(str(tmp_path), name, "mesh_file")
    assert info.value.input_name == "mesh_file"
    check_name_chars("ok/näme é", "filename_prefix")


def test_too_long_names_and_paths_are_named(tmp_path):
    check_name_length(str(tmp_path), "a/" * 10 + "b" * 200, "filename_prefix", reserve=16)
    with pytest.raises(InputError, match="the file name .* is too long"):
        check_name_length(str(tmp_path), "x" * 500, "filename_prefix", reserve=16)
    with pytest.raises(InputError, match="the file name .* is too long"):
        check_name_length(str(tmp_path), "x" * 245, "filename_prefix", reserve=16)    # the counter tips it over
    with pytest.raises(InputError, match="folder name 1 .* is too long"):
        check_name_length(str(tmp_path), "d" * 300 + "/pc", "filename_prefix")
    with pytest.raises(InputError, match="makes a path too long"):
        check_name_length(str(tmp_path), "/".join(["d" * 100] * 50), "filename_prefix", reserve=16)


def test_embedder_key_message_says_expected_and_found(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"transformer.x.lora_A.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(InputError) as info:
        load_domain_embedder(str(path), 32)
    msg = str(info.value)
    assert msg.count("'0.weight', '1.weight'") == 1, msg                  # the expected keys once
    assert "transformer.x.lora_A.weight" in msg and "domain_embedder.pth" in msg, msg


def test_embedder_missing_some_keys_lists_only_those(tmp_path):
    from realiz3d.refany3d.domain_embedder import make_domain_embedder
    sd = {k: v for k, v in make_domain_embedder(32).state_dict().items() if k != "3.bias"}
    path = tmp_path / "partial.safetensors"
    save_file(sd, str(path))
    with pytest.raises(InputError, match=r"this file lacks \[.3.bias.\] and holds 4 tensor"):
        load_domain_embedder(str(path), 32)
