"""RefAny3D end to end on tiny models: conditions from the sample mesh, published-format weights,
sampling with image CFG, determinism, cancel, KV cache, point-map decoding, bad input."""
import os

import numpy as np
import pytest
import torch
from realiz3d.loading import tiny_components
from realiz3d.renderers import InputError, load_mesh, normalize
from realiz3d.refany3d import RefAny3DSettings, attach_refany3d, decode_point_map, sample
from realiz3d.refany3d.conditions import render_conditions
from realiz3d.refany3d.tiny_weights import write_tiny_refany3d

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("refany3d"))
    comps = tiny_components(seed=0, tokenizer_dir=os.path.join(folder, "tok"))
    pipe = comps.pipeline()
    tr = pipe.transformer
    paths = write_tiny_refany3d(folder, tr, seed=10)     # the published formats, for this tiny model
    weights = attach_refany3d(tr, *paths)
    mesh = normalize(load_mesh(os.path.join(ROOT, "assets", "sample_mesh.glb")))
    rgb, pts, bounds = render_conditions(mesh, n_views=2, size=32)
    return pipe, weights, rgb, pts, bounds


def settings(**kw):
    base = dict(steps=2, width=32, height=48, seed=3, max_sequence_length=16)
    base.update(kw)
    return RefAny3DSettings(**base)


def test_sample_shapes_range_and_determinism(setup):
    pipe, weights, rgb, pts, _ = setup
    a_rgb, a_pts = sample(pipe, weights, "a red box", rgb, pts, settings())
    assert a_rgb.shape == (1, 48, 32, 3) and a_pts.shape == (1, 48, 32, 3)
    assert float(a_rgb.min()) >= 0 and float(a_rgb.max()) <= 1
    b_rgb, b_pts = sample(pipe, weights, "a red box", rgb, pts, settings())
    assert torch.equal(a_rgb, b_rgb) and torch.equal(a_pts, b_pts)              # same seed, same result
    c_rgb, _ = sample(pipe, weights, "a red box", rgb, pts, settings(seed=4))
    assert not torch.equal(a_rgb, c_rgb)


def test_image_cfg_combines_the_conditioned_and_the_black_pass(setup, monkeypatch):
    """Each step runs the conditioned pass (group mask, the views' latents in branch order: RGB
    views, then point maps) and the reference's black pass (black views' latents, no mask), and
    moves by v_unc + image_cfg (v_cond - v_unc): with one step the final latents are affine in
    image_cfg, so L(3) - L(1) = 2 (L(2) - L(1)) for both targets."""
    import realiz3d.refany3d.sampler as sampler_module
    from realiz3d.refany3d.layout import group_mask
    from realiz3d.sampling.flow import encode_images
    from realiz3d.sampling.runtime import DiffusersCodec, LatentCodec, runtime_from_pipeline
    pipe, weights, rgb, pts, _ = setup
    calls, finals = [], []

    class Recording(sampler_module.FluxEngine):
        def forward(self, branches, mask=None, *args, **kwargs):
            calls.append((list(branches), mask))
            return super().forward(branches, mask, *args, **kwargs)

    class Capture(LatentCodec):
        channels, can_sample = 16, True

        def __init__(self, inner):
            self.inner = inner

        def encode(self, images, generator, mode):
            return self.inner.encode(images, generator, mode)

        def decode(self, latents):
            finals.append(latents.clone())
            return self.inner.decode(latents)

    monkeypatch.setattr(sampler_module, "FluxEngine", Recording)
    rt = runtime_from_pipeline(pipe)
    rt.codec = Capture(DiffusersCodec(pipe.vae))
    for cfg in (1.0, 2.0, 3.0):
        sample(rt, weights, "x", rgb, pts, settings(steps=1, image_cfg=cfg, condition_latents="mean"))
    rgb1, pts1, rgb2, pts2, rgb3, pts3 = finals
    for one, two, three in ((rgb1, rgb2, rgb3), (pts1, pts2, pts3)):
        assert (two - one).abs().max() > 1e-4
        assert torch.allclose(three - one, 2 * (two - one), atol=1e-5)
    assert len(calls) == 1 + 2 + 2                           # image_cfg 1 skips the black pass
    n = rgb.shape[0]
    views, _ = encode_images(DiffusersCodec(pipe.vae), torch.cat([rgb, pts]), None, "mean")
    black, _ = encode_images(DiffusersCodec(pipe.vae), torch.zeros_like(torch.cat([rgb, pts])), None, "mean")
    (cond_branches, cond_mask), (unc_branches, unc_mask) = calls[1], calls[2]
    assert torch.equal(cond_mask, group_mask(n)) and unc_mask is None
    for k in range(2 * n):
        assert torch.allclose(cond_branches[3 + k].tokens[0], views[k], atol=1e-6)
        assert torch.allclose(unc_branches[3 + k].tokens[0], black[k], atol=1e-6)


def test_cancel_stops_after_the_current_step(setup):
    pipe, weights, rgb, pts, _ = setup
    calls = []

    class Cancelled(BaseException):
        pass

    def progress(done, total):
        calls.append(done)
        raise Cancelled()

    with pytest.raises(Cancelled):
        sample(pipe, weights, "x", rgb, pts, settings(steps=5), progress)
    assert calls == [1]


def test_kv_cache_option_runs_and_is_labelled_as_different(setup):
    pipe, weights, rgb, pts, _ = setup
    plain, _ = sample(pipe, weights, "x", rgb, pts, settings(steps=3))
    cached, _ = sample(pipe, weights, "x", rgb, pts, settings(steps=3, kv_cache=True))
    assert torch.isfinite(cached).all() and cached.shape == plain.shape
    assert not torch.equal(plain, cached)        # another mask: an approximation, never silently "the same"


@pytest.mark.parametrize("kw,name", [(dict(width=40), "width"), (dict(height=0), "height"), (dict(steps=0), "steps")])
def test_bad_settings(setup, kw, name):
    pipe, weights, rgb, pts, _ = setup
    with pytest.raises(InputError) as err:
        sample(pipe, weights, "x", rgb, pts, settings(**kw))
    assert err.value.input_name == name


def test_views_must_match(setup):
    pipe, weights, rgb, pts, _ = setup
    with pytest.raises(InputError, match="must both be"):
        sample(pipe, weights, "x", rgb, pts[:1], settings())


def test_point_map_decodes_to_the_mesh_bounds(setup):
    *_, pts, bounds = setup
    xyz, fg = decode_point_map(pts[0].numpy(), bounds)
    assert fg.sum() > 50 and not fg.all()
    assert np.all(xyz >= bounds[0] - 1e-5) and np.all(xyz <= bounds[1] + 1e-5)
    assert np.ptp(xyz, axis=0).min() > 0.1 * np.ptp(bounds, axis=0).min()


def test_offload_moves_one_component_at_a_time(setup):
    from realiz3d.loading import Offload
    pipe, weights, rgb, pts, _ = setup
    names = {id(pipe.text_encoder): "clip", id(pipe.text_encoder_2): "t5", id(pipe.vae): "vae",
             id(pipe.transformer): "transformer", id(weights.domain_embedder): "embedder"}
    events = []

    class Recording(Offload):
        def use(self, *modules):
            events.append(("in", sorted(names[id(m)] for m in modules)))
            inner = super().use(*modules)

            class Ctx:
                def __enter__(self_):
                    return inner.__enter__()

                def __exit__(self_, *exc):
                    events.append(("out", sorted(names[id(m)] for m in modules)))
                    return inner.__exit__(*exc)
            return Ctx()

    plain, _ = sample(pipe, weights, "x", rgb, pts, settings())
    offloaded, _ = sample(pipe, weights, "x", rgb, pts, settings(), offload=Recording("cpu"))
    assert torch.equal(plain, offloaded)
    assert events == [("in", ["clip", "t5"]), ("out", ["clip", "t5"]), ("in", ["vae"]), ("out", ["vae"]),
                      ("in", ["embedder", "transformer"]), ("out", ["embedder", "transformer"]),
                      ("in", ["vae"]), ("out", ["vae"])]
    assert all(p.device.type == "cpu" for p in pipe.transformer.parameters())
