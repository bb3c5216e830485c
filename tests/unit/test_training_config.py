"""Training configs: the ready files, unknown keys, out-of-range values, overrides."""
import os

import pytest

from realiz3d.renderers import InputError
from realiz3d.training import TrainConfig, load_config
from training_helpers import ROOT, one_thread  # noqa: F401

CONFIGS = os.path.join(ROOT, "training", "configs")


@pytest.mark.parametrize("name,recipe", [("stage1", "stage1"), ("stage2", "stage2"), ("baseline", "stage2"),
                                         ("refany3d", "refany3d")])
def test_ready_configs_parse(name, recipe):
    cfg = load_config(os.path.join(CONFIGS, f"{name}.yaml"))
    assert isinstance(cfg, TrainConfig) and cfg.recipe == recipe
    assert cfg.stage2.baseline == (name == "baseline")
    assert os.path.isabs(cfg.model.folder) and os.path.isabs(cfg.output.dir)


@pytest.mark.parametrize("raw,key", [
    ({"train": {"lrr": 1e-4}}, "train.lrr"),
    ({"trian": {"lr": 1e-4}}, "trian"),
    ({"data": {"render": {"radiuss": 3}}}, "data.render.radiuss"),
])
def test_unknown_key_is_named_with_the_valid_keys(raw, key):
    with pytest.raises(InputError) as e:
        load_config(raw)
    assert e.value.input_name == key
    section = key.rsplit(".", 1)[0] if "." in key else ""
    valid = {"train": "lr", "": "recipe", "data.render": "radius"}[section]
    assert valid in str(e.value) and "Valid keys" in str(e.value)


@pytest.mark.parametrize("key,value", [
    ("train.steps", 0), ("train.lr", 0.0), ("train.lr", -1e-3), ("stage2.tau_b", -1), ("data.real_ratio", 1.5),
    ("data.real_ratio", -0.1), ("refany3d.prompt_dropout", 2.0), ("refany3d.condition_dropout", -0.5),
    ("recipe", "stage3"), ("train.optimizer", "sgd"), ("train.precision", "fp8"), ("data.size", 40),
    ("data.controls", ["normal", "curvature"]), ("train.batch_size", 0), ("data.on_bad_sample", "ignore"),
    ("train.latents", "mode"), ("model.dtype", "int8"), ("checkpoint.every", 0), ("train.steps", "many"),
    ("train.gradient_checkpointing", "yes"),
])
def test_out_of_range_or_wrong_type_is_named(key, value):
    with pytest.raises(InputError) as e:
        load_config({"stage2": {"baseline": True}}, overrides={key: value})
    assert e.value.input_name == key


def test_stage2_needs_its_shifters_unless_baseline():
    with pytest.raises(InputError) as e:
        load_config({"recipe": "stage2"})
    assert e.value.input_name == "stage2.shifters"
    assert load_config({"recipe": "stage2", "stage2": {"baseline": True}}).stage2.baseline


def test_overrides_and_relative_paths(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("recipe: stage1\ndata:\n  real: photos\ntrain:\n  lr: 1e-4\n")
    cfg = load_config(str(path), ["train.steps=7", "train.lr=3e-5", "data.synthetic=renders", "train.betas=[0.8, 0.9]"])
    assert cfg.train.steps == 7 and cfg.train.lr == pytest.approx(3e-5)        # 1e-4 (a YAML string) read as float
    assert cfg.train.betas == [0.8, 0.9]
    assert cfg.data.real == str(tmp_path / "photos")                          # relative to the file
    assert cfg.data.synthetic == os.path.abspath("renders")                   # relative to the working directory
    with pytest.raises(InputError) as e:
        load_config(str(path), ["train.steps"])
    assert e.value.input_name == "--set"
    with pytest.raises(InputError) as e:
        load_config(str(tmp_path / "missing.yaml"))
    assert e.value.input_name == "config"


@pytest.mark.parametrize("name", ["stage1", "stage2", "baseline", "refany3d"])
def test_ready_configs_run_on_tiny_data(tmp_path, name):
    from training_helpers import (SIZE, stage1_shifters, tiny_model_folder, write_real, write_synthetic,
                                  write_triplets)
    from realiz3d.training import train

    overrides = {"model.folder": tiny_model_folder(), "data.size": SIZE, "train.steps": 2,
                 "train.max_sequence_length": 8, "output.dir": str(tmp_path / "out"),
                 "data.real": write_real(tmp_path / "real", n=2), "data.synthetic": write_synthetic(tmp_path / "syn"),
                 "data.refany3d": write_triplets(tmp_path / "tri", n=1), "data.render.backend": "raycast",
                 "stage2.shifters": stage1_shifters(), "stage2.tau_b": 3, "refany3d.n_views": 2,
                 "refany3d.condition_size": SIZE}
    try:
        import prodigyopt  # noqa: F401
    except ImportError:
        overrides.update({"train.optimizer": "adamw", "train.lr": 1e-3})
    cfg = load_config(os.path.join(CONFIGS, f"{name}.yaml"), overrides)
    assert cfg.train.precision == "bf16" and cfg.model.dtype == "bf16" and cfg.train.gradient_checkpointing
    result = train(cfg)                                   # bf16 autocast and checkpointing, as the files say
    assert result.steps == 2 and all(os.path.isfile(p) for p in result.outputs.values())
