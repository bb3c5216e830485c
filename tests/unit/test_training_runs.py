"""Runs that never mix or vanish (training/runs.py): a resumed run with another config is refused
with the differences named, unless continued anyway or started anew; resume off keeps the old
run; an installed result never overwrites another run's file."""
import os

import pytest

from realiz3d.renderers.errors import InputError
from realiz3d.training import load_config, train
from realiz3d.training.runs import (CONTINUE, NEW_RUN, config_differences, install, install_paths, plan_run,
                                    run_folders)
from training_helpers import (base_config, one_thread, stage1_shifters, tiny_pipe, write_real,  # noqa: F401
                              write_synthetic)


def stage2_config(tmp_path, folder="run", **sections):
    data = {"real": write_real(tmp_path / "real", n=2), "synthetic": write_synthetic(tmp_path / "syn", n=2)}
    raw = base_config(tmp_path, "stage2", data={**data, **sections.pop("data", {})},
                      stage2={"shifters": stage1_shifters(), "tau_b": 3, **sections.pop("stage2", {})},
                      train={"steps": 2, **sections.pop("train", {})}, **sections)
    raw["output"] = {"dir": str(tmp_path / folder)}
    return raw


def test_differences_name_what_changed_and_ignore_how_long(tmp_path):
    old = load_config(stage2_config(tmp_path)).to_dict()
    other_shifter = str(tmp_path / "other.safetensors")
    new = load_config({**stage2_config(tmp_path, data={"controls": ["normal"]}, train={"lr": 5e-3, "steps": 50},
                                       lora={"rank": 8}),
                       "checkpoint": {"every": 7}}).to_dict()
    new["stage2"]["shifters"] = other_shifter
    diff = config_differences(old, new)
    joined = "\n".join(diff)
    assert "data.controls" in joined and "train.lr" in joined and "lora.rank" in joined
    assert "stage2.shifters" in joined and other_shifter in joined
    assert "train.steps" not in joined and "checkpoint.every" not in joined
    assert config_differences(old, dict(old)) == []


@pytest.mark.parametrize("change,key", [({"data": {"controls": ["depth", "normal"]}}, "data.controls"),
                                        ({"train": {"lr": 3e-3}}, "train.lr"),
                                        ({"stage2": {"tau_b": 2}}, "stage2.tau_b")])
def test_resume_with_another_config_is_refused_and_names_the_differences(tmp_path, change, key):
    first = train(load_config(stage2_config(tmp_path)), tiny_pipe())
    changed = load_config(stage2_config(tmp_path, train={"steps": 3, **change.pop("train", {})}, **change))
    with pytest.raises(InputError) as e:
        train(changed, tiny_pipe(), resume=first.checkpoint)
    assert e.value.input_name == "resume" and key in str(e.value) and "continue anyway" in str(e.value)
    # the user's explicit choice goes on from the checkpoint
    result = train(changed, tiny_pipe(), resume=first.checkpoint, on_change=CONTINUE)
    assert result.steps == 3 and result.losses[:2] == first.losses


def test_more_steps_resume_without_question(tmp_path):
    first = train(load_config(stage2_config(tmp_path)), tiny_pipe())
    more = train(load_config(stage2_config(tmp_path, train={"steps": 3})), tiny_pipe(), resume=first.checkpoint)
    assert more.steps == 3 and more.losses[:2] == first.losses


def test_plan_keeps_old_runs_and_refuses_a_changed_config(tmp_path):
    root, cfg = str(tmp_path / "runs"), stage2_config(tmp_path)
    plan = plan_run(root, "chair", cfg)
    assert plan.folder == os.path.join(root, "chair") and plan.resume is None
    first = train(load_config({**cfg, "output": {"dir": plan.folder}}), tiny_pipe())
    again = plan_run(root, "chair", cfg)                               # same config: resumes the run
    assert again.folder == plan.folder and again.resume == os.path.join(plan.folder, "checkpoints")
    fresh = plan_run(root, "chair", cfg, resume=False)                 # resume off: a new folder
    assert fresh.folder == os.path.join(root, "chair.2") and fresh.resume is None
    train(load_config({**cfg, "output": {"dir": fresh.folder}}), tiny_pipe())
    assert os.path.isfile(first.checkpoint)                             # the old run is kept
    assert run_folders(root, "chair") == [os.path.join(root, "chair"), os.path.join(root, "chair.2")]
    assert plan_run(root, "chair", cfg).folder == fresh.folder          # resume takes the newest
    changed = stage2_config(tmp_path, train={"lr": 2e-2}, lora={"rank": 2})
    with pytest.raises(InputError) as e:
        plan_run(root, "chair", changed)
    assert e.value.input_name == "resume" and "train.lr" in str(e.value) and "lora.rank" in str(e.value)
    assert plan_run(root, "chair", changed, on_change=NEW_RUN).folder == os.path.join(root, "chair.3")
    anyway = plan_run(root, "chair", changed, on_change=CONTINUE)
    assert anyway.folder == fresh.folder and anyway.continue_anyway
    assert plan_run(root, "table", cfg).folder == os.path.join(root, "table")   # another name, its own run


def test_install_never_overwrites_another_runs_file(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    src_a, src_b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    src_a.write_bytes(b"first run")
    src_b.write_bytes(b"second run")
    run1, run2 = str(tmp_path / "run1"), str(tmp_path / "run2")
    want = str(models / "chair.safetensors")
    assert install(run1, {str(src_a): want})[str(src_a)] == want
    got = install(run2, {str(src_b): want})[str(src_b)]                # another run: a versioned name
    assert got == str(models / "chair_2.safetensors")
    assert open(want, "rb").read() == b"first run" and open(got, "rb").read() == b"second run"
    src_a.write_bytes(b"first run, resumed")                            # the same run updates its own file
    assert install(run1, {str(src_a): want})[str(src_a)] == want and open(want, "rb").read() == b"first run, resumed"
    with open(want, "wb") as f:                                         # ... unless someone replaced it
        f.write(b"the user's own file")
    assert install(run1, {str(src_a): want})[str(src_a)] == str(models / "chair_3.safetensors")
    assert open(want, "rb").read() == b"the user's own file"
    assert install(run2, {str(src_b): want}, overwrite=True)[str(src_b)] == want   # explicit switch
    # a set stays matched; a RefAny3D folder is versioned as a folder
    pair = install_paths(run2, [str(models / "x_control.safetensors"), str(models / "x_target.safetensors")])
    assert pair == [str(models / "x_control.safetensors"), str(models / "x_target.safetensors")]
    (models / "x_target.safetensors").write_bytes(b"taken")
    assert install_paths(run2, pair) == [str(models / "x_control_2.safetensors"),
                                         str(models / "x_target_2.safetensors")]
    (models / "ra").mkdir()
    (models / "ra" / "default.safetensors").write_bytes(b"published")
    assert install_paths(run2, [str(models / "ra" / "default.safetensors")], folder=True) == \
        [str(models / "ra_2" / "default.safetensors")]
