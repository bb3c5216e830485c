"""Checkpoints: stop and resume reproduce an uninterrupted run bit for bit, resuming the wrong
checkpoint is refused, a failed save keeps the previous checkpoint; the command line."""
import errno
import os
import signal

import pytest
import torch
import yaml

from realiz3d.renderers import InputError
from realiz3d.training import list_checkpoints, load_config, read_checkpoint, train
from training_helpers import (ROOT, base_config, one_thread, stage1_shifters, tiny_pipe,  # noqa: F401
                              write_real, write_synthetic, write_triplets)


def data(tmp_path, recipe):
    if recipe == "refany3d":
        return {"refany3d": write_triplets(tmp_path / "tri", n=2)}
    return {"real": write_real(tmp_path / "real", n=3), "synthetic": write_synthetic(tmp_path / "syn", n=3)}


def config(tmp_path, out, recipe="stage2", **kw):
    sections = {"data": data(tmp_path, recipe), "train": {"steps": 5, "batch_size": 2},
                "stage2": {"shifters": stage1_shifters()}, "output": {"dir": str(tmp_path / out)}}
    for key, value in kw.items():
        sections[key] = {**sections.get(key, {}), **value}
    return load_config(base_config(tmp_path, recipe, **sections))


@pytest.mark.parametrize("recipe", ["stage1", "stage2", "refany3d"])
def test_stop_and_resume_equals_an_uninterrupted_run(tmp_path, recipe):
    straight = train(config(tmp_path, "a", recipe), tiny_pipe())
    cfg = config(tmp_path, "b", recipe)
    done = []
    first = train(cfg, tiny_pipe(), progress=lambda step, total: done.append(step), should_stop=lambda: len(done) >= 2)
    assert first.stopped and first.steps == 2 and first.checkpoint.endswith("step-0000002.ckpt")
    assert os.path.isfile(first.outputs["loss_curve"])                     # outputs are written on stop too
    later = []
    resumed = train(cfg, tiny_pipe(), resume=os.path.dirname(first.checkpoint),
                    progress=lambda step, total: later.append(step))
    assert not resumed.stopped and resumed.steps == 5 and later == [3, 4, 5]     # only the remaining steps ran
    assert resumed.losses == straight.losses
    assert set(resumed.parameters) == set(straight.parameters)
    for name, value in straight.parameters.items():
        assert torch.equal(resumed.parameters[name], value), name
    assert any(not torch.equal(v, first.parameters[n]) for n, v in straight.parameters.items())   # it did train


def test_resume_from_another_recipe_or_layout_is_refused(tmp_path):
    stage1 = train(config(tmp_path, "s1", "stage1", train={"steps": 1}), tiny_pipe())
    with pytest.raises(InputError) as e:
        train(config(tmp_path, "s2", "stage2", train={"steps": 2}), tiny_pipe(), resume=stage1.checkpoint)
    assert e.value.input_name == "resume" and "stage1" in str(e.value) and "stage2" in str(e.value)
    baseline = config(tmp_path, "s3", "stage2", stage2={"baseline": True}, train={"steps": 2})
    stage2 = train(config(tmp_path, "s4", "stage2", train={"steps": 1}), tiny_pipe())
    with pytest.raises(InputError) as e:
        train(baseline, tiny_pipe(), resume=stage2.checkpoint)
    assert e.value.input_name == "resume" and "stage2-baseline" in str(e.value)
    with pytest.raises(InputError) as e:                                # other trainables (shifter rank)
        train(config(tmp_path, "s5", "stage1", shifters={"rank": 8}, train={"steps": 2}), tiny_pipe(),
              resume=stage1.checkpoint)
    assert e.value.input_name == "resume" and "rank" in str(e.value)
    from diffusers import FluxTransformer2DModel                        # another model layout
    pipe = tiny_pipe()
    pipe.transformer = FluxTransformer2DModel.from_config({**pipe.transformer.config, "num_single_layers": 1})
    with pytest.raises(InputError) as e:
        train(config(tmp_path, "s6", "stage1", train={"steps": 2}), pipe, resume=stage1.checkpoint)
    assert e.value.input_name == "resume" and "2 double + 2 single" in str(e.value)
    with pytest.raises(InputError) as e:
        train(config(tmp_path, "s7", "stage1", train={"steps": 2}), tiny_pipe(), resume=str(tmp_path / "none.ckpt"))
    assert e.value.input_name == "resume"


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import realiz3d.training.checkpoint as checkpoint

    real_write, calls = checkpoint._write, []

    def disk_full_on_second_save(payload, path):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(payload, path)

    monkeypatch.setattr(checkpoint, "_write", disk_full_on_second_save)
    cfg = config(tmp_path, "out", "stage1", train={"steps": 4}, checkpoint={"every": 2})
    with pytest.raises(OSError) as e:
        train(cfg, tiny_pipe())
    assert "step-0000004.ckpt" in str(e.value) and "step-0000002.ckpt is intact" in str(e.value)
    folder = cfg.checkpoint_dir
    assert os.listdir(folder) == ["step-0000002.ckpt"]                   # no partial file, no temporary left
    kept = read_checkpoint(folder)
    assert kept["step"] == 2 and len(kept["losses"]) == 2
    monkeypatch.setattr(checkpoint, "_write", real_write)
    assert train(cfg, tiny_pipe(), resume=folder).steps == 4


def test_periodic_checkpoints_are_pruned(tmp_path):
    cfg = config(tmp_path, "out", "stage1", train={"steps": 5, "batch_size": 1}, checkpoint={"every": 1, "keep": 2})
    train(cfg, tiny_pipe())
    assert [os.path.basename(p) for p in list_checkpoints(cfg.checkpoint_dir)] == ["step-0000004.ckpt",
                                                                                   "step-0000005.ckpt"]


def test_command_line_trains_and_stops_on_ctrl_c(tmp_path, monkeypatch, capsys):
    from realiz3d.training import recipes
    from realiz3d.training.cli import main

    raw = base_config(tmp_path, "stage1", data=data(tmp_path, "stage1"), train={"steps": 3})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main([str(path), "--set", "train.steps=2"]) == 0
    out = raw["output"]["dir"]
    assert {"shifters.safetensors", "loss_curve.png", "config.yaml"} <= set(os.listdir(out))
    err = capsys.readouterr().err
    assert "step 2/2 loss" in err and "s/step" in err and "lr 1.00e-02" in err
    assert load_config(os.path.join(out, "config.yaml")).train.steps == 2      # the config as it was run

    step = recipes.Realiz3DRecipe.step

    def step_then_ctrl_c(self, *a, **kw):                                  # Ctrl-C arrives during step 2
        result = step(self, *a, **kw)
        if self.text.encoded and len(getattr(self, "_calls", [])) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        self._calls = getattr(self, "_calls", []) + [1]
        return result
    monkeypatch.setattr(recipes.Realiz3DRecipe, "step", step_then_ctrl_c)
    raw["output"]["dir"] = str(tmp_path / "stopped")
    path.write_text(yaml.safe_dump(raw))
    assert main([str(path), "--set", "train.steps=50"]) == 130
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path / "stopped" / "checkpoints"))] == \
        ["step-0000002.ckpt"]
    assert os.path.isfile(tmp_path / "stopped" / "shifters.safetensors")
    assert main([str(tmp_path / "missing.yaml")]) == 2
    assert os.path.isfile(os.path.join(ROOT, "scripts", "train.py"))
