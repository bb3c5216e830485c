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


class Spy:
    """Records the branches every engine forward of the sampler receives."""

    def __init__(self, monkeypatch):
        import realiz3d.sampling.realiz3d_sampler as sampler
        self.calls = []
        spy = self

        class Recording(sampler.FluxEngine):
            def forward(self, branches, *args, **kwargs):
                spy.calls.append(list(branches))
                return super().forward(branches, *args, **kwargs)

        monkeypatch.setattr(sampler, "FluxEngine", Recording)


def test_control_branches_are_aligned_at_t0_with_the_control_lora_only(pipe, monkeypatch):
    spy = Spy(monkeypatch)
    image = sample_realiz3d(pipe, "a chair", controls(), settings(), (pipe.control_adapter,))
    assert image.shape == (1, 32, 32, 3) and len(spy.calls) == 2               # one forward per step
    for text, target, control in spy.calls:
        assert text.is_text and not text.adapters and target.adapters == () and target.block_domains is None
        assert control.adapters == (pipe.control_adapter,)
        assert float(control.timestep[0]) == 0.0 and float(control.guidance[0]) == 1.0
        assert float(target.timestep[0]) > 0 and float(target.guidance[0]) == settings().guidance
        assert torch.equal(control.ids, target.ids)                           # spatially aligned: offset 0
    # the control LoRA acts through the control branches only: without them it changes nothing
    plain = sample_realiz3d(pipe, "a chair", None, settings())
    assert torch.equal(plain, sample_realiz3d(pipe, "a chair", None, settings(), (pipe.control_adapter,)))
    assert (image - sample_realiz3d(pipe, "a chair", controls(), settings())).abs().max() > 1e-4
    assert torch.equal(image, sample_realiz3d(pipe, "a chair", controls(), settings(), (pipe.control_adapter,)))


def test_target_adapters_apply_to_the_target_branch(pipe, monkeypatch):
    """Stage 2's target LoRA (training/README.md) sits on the target branch and nowhere else."""
    spy = Spy(monkeypatch)
    target = sample_realiz3d(pipe, "a chair", controls(), settings(), (), target_adapters=(pipe.control_adapter,))
    for text, tgt, control in spy.calls:
        assert tgt.adapters == (pipe.control_adapter,) and control.adapters == () and text.adapters == ()
    assert (target - sample_realiz3d(pipe, "a chair", controls(), settings())).abs().max() > 1e-4


def test_shifters_follow_the_schedule(pipe, monkeypatch):
    """Each preset means what it says: layer-aware with k = every block is 'synthetic', with k = 0
    'real'; step-switch with fraction 1 is 'synthetic'; the shifts go to the target branch only,
    with the domain the schedule names for each block."""
    tr = pipe.transformer
    cfg = ShifterConfig.for_transformer(tr, rank=4, embed_dim=8)
    n = cfg.num_blocks
    untrained = DomainShifters(cfg)                                             # zero up-projection: identity
    base = sample_realiz3d(pipe, "x", controls(), settings())
    assert torch.equal(sample_realiz3d(pipe, "x", controls(), settings(), shifters=untrained,
                                       schedule=make_schedule("synthetic")), base)
    trained = DomainShifters(cfg)
    for p in trained.parameters():
        torch.nn.init.normal_(p, std=0.2)

    def run(preset, **kw):
        return sample_realiz3d(pipe, "x", controls(), settings(), shifters=trained, schedule=make_schedule(preset, **kw))

    real, synth = run("real"), run("synthetic")
    assert (real - synth).abs().max() > 1e-4
    assert torch.equal(run("layer-aware", k_layers=n), synth) and torch.equal(run("layer-aware", k_layers=0), real)
    assert torch.equal(run("step-switch", switch_fraction=1.0), synth)
    spy = Spy(monkeypatch)
    run("layer-aware", k_layers=2)
    s_idx, r_idx = trained.domain_index("synthetic"), trained.domain_index("real")
    for branches in spy.calls:
        assert list(branches[1].block_domains) == [s_idx] * 2 + [r_idx] * (n - 2)
        assert all(b.block_domains is None for i, b in enumerate(branches) if i != 1)


def test_shifters_follow_the_model_device(pipe):
    """Shifters loaded or trained on the CPU go where the model computes (the token variant has
    no precomputed table that would carry them): the sampler moves them with the model."""
    from realiz3d.sampling.runtime import runtime_from_pipeline
    cfg = ShifterConfig.for_transformer(pipe.transformer, rank=4, embed_dim=8, variant="token")
    shifters = DomainShifters(cfg)
    moved = []
    original = shifters.to

    def recording_to(*args, **kwargs):
        moved.append(args[0] if args else kwargs.get("device"))
        return original(*args, **kwargs)

    shifters.to = recording_to
    rt = runtime_from_pipeline(pipe)
    sample_realiz3d(rt, "x", controls(), settings(), shifters=shifters, schedule=make_schedule("synthetic"))
    assert rt.device in [torch.device(d) for d in moved if d is not None]


def test_token_variant_shifters_on_cuda(pipe):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here: the token-variant shifters on a GPU are checked where one is present")
    cfg = ShifterConfig.for_transformer(pipe.transformer, rank=4, embed_dim=8, variant="token")
    shifters = DomainShifters(cfg)                    # on the CPU, as Load / Train Domain Shifter return them
    pipe.to("cuda")
    try:
        out = sample_realiz3d(pipe, "x", controls(), settings(), shifters=shifters, schedule=make_schedule("synthetic"))
        assert out.shape == (1, 32, 32, 3) and next(shifters.parameters()).device.type == "cuda"
    finally:
        pipe.to("cpu")
        shifters.to("cpu")


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
    # the control is the grid of the chosen map of the mesh's own views, one cell per camera
    import realiz3d.sampling.realiz3d_sampler as sampler
    from realiz3d.sampling.multiview import control_maps
    seen = []
    real_sample = sampler.sample_realiz3d

    def recording(rt, prompt, controls_, *args, **kwargs):
        (one,) = kwargs["control_sets"]                      # one control LoRA: one set
        assert controls_ is None and one.adapters == (pipe.control_adapter,)
        seen.append(one.images)
        return real_sample(rt, prompt, controls_, *args, **kwargs)

    sampler.sample_realiz3d = recording
    try:
        for kind in ("normal", "depth"):
            generate_multiview(pipe, mesh, cams, "a toy", settings(), view_size=16, columns=2, control=kind,
                               control_adapters=(pipe.control_adapter,))
    finally:
        sampler.sample_realiz3d = real_sample
    assert len(seen) == 2
    for controls_, kind in zip(seen, ("normal", "depth")):
        assert controls_.shape == (1, 32, 32, 3)
        assert torch.equal(controls_[0], make_grid(control_maps(bundle, kind), 2))
    with pytest.raises(InputError, match="view_size"):
        generate_multiview(pipe, mesh, cams, "a toy", settings(), view_size=20)


def test_transparent_controls_are_composited_over_black(pipe):
    """Control maps' documented background is black: an RGBA control's transparent pixels are black."""
    from realiz3d.renderers.images import composite_over
    rgb = controls()
    alpha = (torch.arange(32)[None, :, None, None] < 16).float().expand(1, 32, 32, 1)   # top half opaque
    rgba = torch.cat([rgb, alpha], dim=-1)
    flat = torch.where(alpha.bool(), rgb, torch.zeros(()))
    assert torch.equal(composite_over(rgba), flat)
    np_flat = composite_over(rgba.numpy())
    assert np_flat.shape == (1, 32, 32, 3) and np_flat[0, 20:].max() == 0
    got = sample_realiz3d(pipe, "x", rgba, settings(), (pipe.control_adapter,))
    assert torch.equal(got, sample_realiz3d(pipe, "x", flat, settings(), (pipe.control_adapter,)))
    white = torch.where(alpha.bool(), rgb, torch.ones(()))
    assert (got - sample_realiz3d(pipe, "x", white, settings(), (pipe.control_adapter,))).abs().max() > 1e-4


def test_multiview_per_view_layout_samples_each_view_alone_with_the_same_seed(pipe):
    """layout 'per view': view v equals sampling its own control map alone at view_size, same seed."""
    from realiz3d.sampling.multiview import control_maps
    from realiz3d.sampling.realiz3d_sampler import ControlSet
    mesh = normalize(load_mesh(os.path.join(ROOT, "assets", "sample_mesh.glb")))
    cams = orbit_rig(3, elevation_deg=20.0)
    done = []
    sets = [("depth (inverse)", (pipe.control_adapter,), "mean", True), ("canny", (), "mean", True)]
    views, bundle = generate_multiview(pipe, mesh, cams, "a toy", settings(), view_size=16, control_sets=sets,
                                       layout="per view", progress=lambda i, n: done.append((i, n)))
    assert views.shape == (3, 16, 16, 3) and done[-1] == (6, 6) and len(done) == 6
    depth, canny = control_maps(bundle, "depth (inverse)"), control_maps(bundle, "canny")
    alone = sample_realiz3d(pipe, "a toy", None, settings(width=16, height=16), control_sets=[
        ControlSet(depth[1:2], (pipe.control_adapter,), "mean", True), ControlSet(canny[1:2], (), "mean", True)])
    assert torch.equal(views[1], alone[0])
    assert not torch.equal(views[0], views[1])                  # each view under its own controls
    with pytest.raises(InputError, match="layout"):
        generate_multiview(pipe, mesh, cams, "a toy", settings(), view_size=16, layout="diagonal")
