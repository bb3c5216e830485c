"""Realiz3D sampling on the tiny model: geometry controls, shifters under a schedule, multiview grids."""
import os

import pytest
import torch

from realiz3d.adapters import DomainShifters, ShifterConfig, make_schedule
from realiz3d.engine.lora_files import attach_lora
from realiz3d.loading import tiny_components
from realiz3d.renderers import InputError, load_mesh, normalize, orbit_rig
from realiz3d.refany3d.tiny_weights import write_tiny_refany3d
from realiz3d.sampling.multiview import generate_multiview, make_grid, split_grid
from realiz3d.sampling.realiz3d_sampler import Realiz3DSettings, sample_realiz3d

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("r3d"))
    p = tiny_components(seed=0, tokenizer_dir=os.path.join(folder, "tok")).pipeline()
    # a control LoRA in diffusers' file layout (the tiny RefAny3D writer makes such files)
    control = write_tiny_refany3d(folder, p.transformer, seed=3)[0]
    p.control_adapter = attach_lora(p.transformer, control, "control", "control_lora")
    return p


def settings(**kw):
    base = dict(steps=2, width=32, height=32, seed=1, max_sequence_length=16)
    base.update(kw)
    return Realiz3DSettings(**base)


def controls(seed=0):
    return torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(seed))


def test_controls_and_control_lora_shape_the_result(pipe):
    plain = sample_realiz3d(pipe, "a chair", None, settings())
    ctrl = sample_realiz3d(pipe, "a chair", controls(), settings())
    lora = sample_realiz3d(pipe, "a chair", controls(), settings(), (pipe.control_adapter,))
    assert plain.shape == (1, 32, 32, 3)
    assert (plain - ctrl).abs().max() > 1e-4 and (ctrl - lora).abs().max() > 1e-4
    assert torch.equal(lora, sample_realiz3d(pipe, "a chair", controls(), settings(), (pipe.control_adapter,)))


def test_target_adapters_apply_to_the_target_branch(pipe):
    """Stage 2's target LoRA (training/README.md) on the target branch changes the image; with no
    target adapter the result is exactly the control-only one."""
    base = sample_realiz3d(pipe, "a chair", controls(), settings(), (pipe.control_adapter,))
    target = sample_realiz3d(pipe, "a chair", controls(), settings(), (pipe.control_adapter,),
                             target_adapters=(pipe.control_adapter,))
    assert (base - target).abs().max() > 1e-4
    none = sample_realiz3d(pipe, "a chair", controls(), settings(), (pipe.control_adapter,), target_adapters=())
    assert torch.equal(base, none)


def test_shifters_follow_the_schedule(pipe):
    tr = pipe.transformer
    cfg = ShifterConfig.for_transformer(tr, rank=4, embed_dim=8)
    untrained = DomainShifters(cfg)
    base = sample_realiz3d(pipe, "x", controls(), settings())
    assert torch.equal(sample_realiz3d(pipe, "x", controls(), settings(), shifters=untrained,
                                       schedule=make_schedule("synthetic")), base)
    trained = DomainShifters(cfg)
    for p in trained.parameters():
        torch.nn.init.normal_(p, std=0.2)
    real = sample_realiz3d(pipe, "x", controls(), settings(), shifters=trained, schedule=make_schedule("real"))
    synth = sample_realiz3d(pipe, "x", controls(), settings(), shifters=trained, schedule=make_schedule("synthetic"))
    layer = sample_realiz3d(pipe, "x", controls(), settings(), shifters=trained,
                            schedule=make_schedule("layer-aware", k_layers=2))
    assert (real - synth).abs().max() > 1e-4 and (layer - real).abs().max() > 1e-4
    assert (layer - synth).abs().max() > 1e-4


@pytest.mark.parametrize("kwargs,name", [(dict(settings=settings(width=40)), "width"),
                                          (dict(controls=torch.rand(1, 16, 16, 3)), "controls"),
                                          (dict(schedule=make_schedule("real")), "schedule")])
def test_bad_input(pipe, kwargs, name):
    args = dict(prompt="x", controls=controls(), settings=settings())
    args.update(kwargs)
    with pytest.raises(InputError) as err:
        sample_realiz3d(pipe, **args)
    assert err.value.input_name == name


def test_grid_round_trip():
    views = torch.rand(5, 8, 6, 3)
    grid = make_grid(views, 3)
    assert grid.shape == (16, 18, 3) and torch.all(grid[8:, 12:] == 0)
    assert torch.equal(split_grid(grid, 5, 3), views)


def test_multiview_generates_views_that_keep_their_cameras(pipe):
    mesh = normalize(load_mesh(os.path.join(ROOT, "assets", "sample_mesh.glb")))
    cams = orbit_rig(4, elevation_deg=20.0)
    views, bundle = generate_multiview(pipe, mesh, cams, "a toy", settings(), view_size=16, columns=2,
                                       control="normal", control_adapters=(pipe.control_adapter,))
    assert views.shape == (4, 16, 16, 3) and bundle.cameras == cams
    other, _ = generate_multiview(pipe, mesh, cams, "a toy", settings(), view_size=16, columns=2, control="depth",
                                  control_adapters=(pipe.control_adapter,))
    assert (views - other).abs().max() > 1e-4
    with pytest.raises(InputError, match="view_size"):
        generate_multiview(pipe, mesh, cams, "a toy", settings(), view_size=20)
