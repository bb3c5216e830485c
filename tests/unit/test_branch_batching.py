"""Branch batching (engine.branch_layout): branches that share adapters, timestep, guidance, domain
tag and schedule run as one token stream, and the forward equals the per-branch forward (the
previous engine) for RefAny3D (with and without the group mask, with the KV cache), Realiz3D
controls with shifters, whole sampling loops, a training step's loss and gradients, and on
ComfyUI's BFL layout; FlexAttention equals the dense reference; a forward reads nothing back
from the device; the KV cache holds compute-dtype tensors of its own and is freed after a prompt."""
import gc
import os
import weakref

import pytest
import torch

from capture import capture_runtime

from realiz3d.engine import FluxEngine, KVCache, dense_masked_attention, grouped_attention
from realiz3d.refany3d import layout as ra
from realiz3d.refany3d.domain_embedder import make_domain_embedder
from realiz3d.sampling import realiz3d_layout
from test_engine import add_lora, image_ids, tiny_transformer
from training_helpers import one_thread  # noqa: F401  (autouse: one torch thread per test)

TOL = 1e-5


def refany3d_model(seed=0):
    tr = tiny_transformer(seed=seed)
    add_lora(tr, "default", 1)
    add_lora(tr, "coord", 2)
    embedder = make_domain_embedder(64)
    for p in embedder.parameters():                 # the published embedder's last layer is zero-init
        torch.nn.init.normal_(p, std=0.1)
    return tr, embedder


def refany3d_branches(n_views=8, B=2, seed=0, t=None, conditions=None):
    """RefAny3D's branches from the layout builder the sampler and the recipe share (4x4 target,
    2x2 condition views, 7 text tokens)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor([0.3, 0.7][:B]) if t is None else t
    guidance = torch.full((B,), 3.5)
    cond = torch.randn(B, 2 * n_views, 4, 16, generator=g) if conditions is None else conditions
    return ra.build_branches(torch.randn(B, 7, 48, generator=g), torch.zeros(7, 3), t, guidance,
                             torch.randn(B, 16, 16, generator=g), torch.randn(B, 16, 16, generator=g),
                             image_ids(4, 4), cond, ra.condition_ids(image_ids(2, 2), 32), torch.ones(B),
                             ra.adapters(n_views))


def reference(tr, embedder=None, **kw):
    """The previous engine: every branch on its own, per-branch grouped attention."""
    return FluxEngine(tr, embedder, batch_branches=False, attention=grouped_attention, **kw)


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[i] - b[i]).abs().max()) for i in a)


def test_refany3d_at_8_views_runs_5_streams():
    tr, emb = refany3d_model()
    layout = FluxEngine(tr, emb).layout(refany3d_branches(), ra.group_mask(8))
    assert [s.members for s in layout.streams] == [(0,), (1,), (2,), tuple(range(3, 11)), tuple(range(11, 19))]
    assert len(reference(tr, emb).layout(refany3d_branches(), ra.group_mask(8)).streams) == 19


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("attention", ["grouped", "flex_eager", "dense"])
def test_refany3d_batched_equals_per_branch(masked, attention):
    tr, emb = refany3d_model()
    mask = ra.group_mask(8) if masked else None
    ref = reference(tr, emb)(refany3d_branches(), mask, torch.randn(2, 24, generator=torch.Generator().manual_seed(4)),
                             outputs=[1, 2, 5, 14])
    out = FluxEngine(tr, emb, attention=attention)(refany3d_branches(), mask,
                                                   torch.randn(2, 24, generator=torch.Generator().manual_seed(4)),
                                                   outputs=[1, 2, 5, 14])
    assert max_diff(out, ref) <= TOL
    assert float(ref[1].abs().max()) > 0.1
    if masked:      # the mask matters: the comparison is not between two unmasked forwards
        unmasked = reference(tr, emb)(refany3d_branches(), None,
                                      torch.randn(2, 24, generator=torch.Generator().manual_seed(4)), outputs=[1])
        assert float((unmasked[1] - ref[1]).abs().max()) > 1e-4


def test_per_branch_attention_functions_still_plug_in():
    tr, emb = refany3d_model()
    pooled = torch.randn(2, 24)
    a = FluxEngine(tr, emb, attention=dense_masked_attention)(refany3d_branches(n_views=2), ra.group_mask(2), pooled)
    b = reference(tr, emb)(refany3d_branches(n_views=2), ra.group_mask(2), pooled)
    assert max_diff(a, b) <= TOL


def test_refany3d_kv_cache_batched_equals_per_branch():
    tr, emb = refany3d_model()
    mask, pooled = ra.group_mask(4, independent_conditions=True), torch.randn(2, 24)
    cond = torch.randn(2, 8, 4, 16, generator=torch.Generator().manual_seed(7))
    garbage = torch.full_like(cond, 1e3)
    results = []
    for engine in (reference(tr, emb), FluxEngine(tr, emb)):
        cache = KVCache(range(3, 11))
        first = engine(refany3d_branches(4, conditions=cond), mask, pooled, outputs=[1, 2], kv_cache=cache)
        t1 = torch.tensor([0.1, 0.2])
        later = engine(refany3d_branches(4, t=t1, conditions=garbage), mask, pooled, outputs=[1, 2], kv_cache=cache)
        full = engine(refany3d_branches(4, t=t1, conditions=cond), mask, pooled, outputs=[1, 2])
        assert max_diff(later, full) <= TOL
        results.append((first, later))
    assert max_diff(results[0][0], results[1][0]) <= TOL and max_diff(results[0][1], results[1][1]) <= TOL


def test_kv_cache_holds_compute_dtype_tensors_of_their_own():
    tr, emb = refany3d_model()
    tr, emb = tr.to(torch.bfloat16), emb.to(torch.bfloat16)
    cache = KVCache(range(3, 7))
    FluxEngine(tr, emb)(refany3d_branches(2), ra.group_mask(2, independent_conditions=True),
                        torch.randn(2, 24).to(torch.bfloat16), kv_cache=cache)
    tensors = cache.tensors()
    assert len(tensors) == 2 * 2 * tr.config.num_layers + 2 * 2 * tr.config.num_single_layers   # k, v x 2 streams
    for t in tensors:
        assert t.dtype == torch.bfloat16
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()      # not a view of a layer output
    assert cache.nbytes == sum(t.numel() * t.element_size() for t in tensors)
    refs = [weakref.ref(t) for t in tensors]
    del tensors, t
    cache.clear()
    gc.collect()
    assert all(r() is None for r in refs) and not cache.filled


def realiz3d_shifters(tr):
    from realiz3d.adapters import DomainShifters, ShifterConfig
    torch.manual_seed(3)
    shifters = DomainShifters(ShifterConfig.for_transformer(tr, rank=4))
    for p in shifters.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return shifters


@pytest.mark.parametrize("precompute", [True, False])
def test_realiz3d_controls_with_shifters_batched_equals_per_branch(precompute):
    tr = tiny_transformer()
    add_lora(tr, "control", 1)
    add_lora(tr, "target", 2)
    shifters = realiz3d_shifters(tr)
    g = torch.Generator().manual_seed(5)
    B, t = 2, torch.tensor([0.4, 0.9])
    domains = [0, 1, 1, 0]

    def branches():
        gg = torch.Generator().manual_seed(6)
        return realiz3d_layout.build_branches(torch.randn(B, 7, 48, generator=gg), torch.zeros(7, 3), t,
                                              torch.full((B,), 3.5), torch.randn(B, 20, 16, generator=gg),
                                              image_ids(4, 5), ("target",), domains,
                                              torch.randn(B, 3, 20, 16, generator=gg), ("control",), torch.ones(B))
    pooled = torch.randn(B, 24, generator=g)
    trace_a, trace_b = [], []
    a = FluxEngine(tr, shifters=shifters, trace=trace_a, precompute_shifts=precompute)(branches(), None, pooled)
    b = reference(tr, shifters=shifters, trace=trace_b, precompute_shifts=precompute)(branches(), None, pooled)
    assert max_diff(a, b) <= TOL and sorted(trace_a) == sorted(trace_b)
    assert len(FluxEngine(tr, shifters=shifters).layout(branches()).streams) == 3          # text, target, controls


@pytest.fixture(scope="module")
def refany3d_setup(tmp_path_factory):
    from realiz3d.loading import tiny_components
    from realiz3d.refany3d import attach_refany3d
    from realiz3d.refany3d.tiny_weights import write_tiny_refany3d
    folder = str(tmp_path_factory.mktemp("batching"))
    pipe = tiny_components(seed=0, tokenizer_dir=os.path.join(folder, "tok")).pipeline()
    weights = attach_refany3d(pipe.transformer, *write_tiny_refany3d(folder, pipe.transformer, seed=10))
    g = torch.Generator().manual_seed(0)
    views = torch.rand(3, 32, 32, 3, generator=g), torch.rand(3, 32, 32, 3, generator=g)
    return pipe, weights, views


@pytest.mark.parametrize("kv_cache", [False, True])
def test_refany3d_sampler_final_latents_batched_equal_per_branch(refany3d_setup, kv_cache):
    from realiz3d.refany3d import RefAny3DSettings, sample
    pipe, weights, (rgb, pts) = refany3d_setup
    s = RefAny3DSettings(steps=3, width=32, height=32, seed=2, max_sequence_length=16, condition_latents="mean",
                         kv_cache=kv_cache, batch=2)
    finals = []
    for batch in (True, False):
        rt = capture_runtime(pipe)
        torch.set_num_threads(1)
        sample(rt, weights, "a red box", rgb, pts, s, batch_branches=batch)
        finals.append(rt.codec.decoded)
    for a, b in zip(*finals):
        assert float((a - b).abs().max()) <= TOL


def test_kv_cache_is_released_after_sampling(refany3d_setup, monkeypatch):
    import realiz3d.refany3d.sampler as sampler_module
    from realiz3d.refany3d import RefAny3DSettings, sample
    pipe, weights, (rgb, pts) = refany3d_setup
    seen = []

    class Watched(KVCache):
        def clear(self):
            seen.append(([weakref.ref(t) for t in self.tensors()], {t.dtype for t in self.tensors()}))
            super().clear()

    monkeypatch.setattr(sampler_module, "KVCache", Watched)
    sample(pipe, weights, "x", rgb, pts, RefAny3DSettings(steps=2, width=32, height=32, max_sequence_length=16,
                                                          kv_cache=True))
    gc.collect()
    assert len(seen) == 2                                         # the conditioned and the black pass
    for refs, dtypes in seen:
        assert refs and dtypes == {pipe.transformer.dtype}
        assert all(r() is None for r in refs)                    # nothing holds the cache after the prompt


def test_realiz3d_sampler_with_controls_batched_equals_per_branch(refany3d_setup):
    from realiz3d.sampling.realiz3d_sampler import Realiz3DSettings, sample_realiz3d
    pipe = refany3d_setup[0]
    controls = torch.rand(3, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    s = Realiz3DSettings(steps=2, width=32, height=32, seed=1, max_sequence_length=16)
    finals = []
    for batch in (True, False):
        rt = capture_runtime(pipe)
        sample_realiz3d(rt, "a chair", controls, s, batch_branches=batch)
        finals.append(rt.codec.decoded[0])
    assert float((finals[0] - finals[1]).abs().max()) <= TOL


def test_refany3d_training_step_loss_and_gradients_batched_equal_per_branch(tmp_path):
    from realiz3d.training import Plan, Sample, load_config, make_recipe
    from training_helpers import SIZE, base_config, tiny_pipe
    cfg = load_config(base_config(tmp_path, "refany3d", train={"max_sequence_length": 8}))
    recipe = make_recipe(cfg, tiny_pipe(), "cpu")
    for name, p in recipe.trainables().items():           # zero-init LoRA B would hide the adapters
        if "lora_B" in name:
            torch.nn.init.normal_(p.data, std=0.05)
    n = cfg.refany3d.n_views
    g = torch.Generator().manual_seed(0)
    s = Sample(key="t0", domain="real", image=torch.rand(SIZE, SIZE, 3, generator=g), caption="a box",
               point_map=torch.rand(SIZE, SIZE, 3, generator=g),
               views=(torch.rand(n, SIZE, SIZE, 3, generator=g), torch.rand(n, SIZE, SIZE, 3, generator=g)),
               views_key="box")
    results = []
    for batch in (True, False):
        recipe.engine = FluxEngine(recipe.transformer, domain_embedder=recipe.embedder, batch_branches=batch,
                                   **({} if batch else {"attention": grouped_attention}))
        for p in recipe.trainables().values():
            p.grad = None
        loss = recipe.run_group([s], [Plan()], [torch.Generator().manual_seed(1)])
        loss.sum().backward()
        results.append((loss.detach(), {k: p.grad.clone() for k, p in recipe.trainables().items()
                                        if p.grad is not None}))
    (la, ga), (lb, gb) = results
    assert float((la - lb).abs().max()) <= TOL and len(ga) > 10
    # a parameter whose output never reaches the loss (the last single block's queries of branches
    # whose outputs are not read) has no gradient on one path and a zero one on the other
    for k in ga.keys() | gb.keys():
        a, b = ga.get(k), gb.get(k)
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        assert float((a - b).abs().max()) <= TOL, k
    recipe.release()


SYNC_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero", "aten::equal",
            "aten::masked_select", "aten::unique", "aten::_unique2"}


class HostReads:
    """Records (torch profiler) every op that makes the host wait for the device on a GPU:
    scalar reads, data-dependent shapes."""

    def __enter__(self):
        self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        self.prof.__exit__(*exc)
        self.seen = [e.name for e in self.prof.events() if e.name in SYNC_OPS]


@pytest.mark.parametrize("attention", ["grouped", "flex_eager"])
def test_a_forward_reads_nothing_back_from_the_device(attention, monkeypatch):
    tr, emb = refany3d_model()
    engine = FluxEngine(tr, emb, attention=attention)
    mask, pooled = ra.group_mask(8), torch.randn(2, 24)
    cache = KVCache(range(3, 19))
    ind = ra.group_mask(8, independent_conditions=True)
    engine(refany3d_branches(), mask, pooled)                      # prepares the layouts (host work, once)
    engine(refany3d_branches(), ind, pooled, kv_cache=cache)
    engine(refany3d_branches(), ind, pooled, kv_cache=cache)
    calls = []
    for name in ("tolist", "item", "cpu", "numpy", "__bool__"):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *a, _name=name, _orig=original, **k):
            calls.append(_name)
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, wrapped)
    reads = HostReads()
    with reads:
        engine(refany3d_branches(t=torch.tensor([0.5, 0.25])), mask, pooled)       # a new step: new tensors
        engine(refany3d_branches(t=torch.tensor([0.5, 0.25])), ind, pooled, kv_cache=cache)
    monkeypatch.undo()
    assert calls == [] and reads.seen == []


def test_the_sync_detector_detects():
    reads = HostReads()
    with reads:
        x = torch.ones(3)
        bool(x.sum() > 1), x.nonzero()
    assert "aten::_local_scalar_dense" in reads.seen and "aten::nonzero" in reads.seen


def test_compiled_blocks_equal_eager():
    """torch.compile of the block functions (one test: compiling on the CPU takes tens of seconds)."""
    torch.manual_seed(0)
    from diffusers import FluxTransformer2DModel
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                attention_head_dim=32, num_attention_heads=2, joint_attention_dim=48,
                                pooled_projection_dim=24, guidance_embeds=True, axes_dims_rope=(8, 12, 12)).eval()
    for p in tr.parameters():
        torch.nn.init.normal_(p, std=0.05)
    add_lora(tr, "default", 1)
    add_lora(tr, "coord", 2)
    emb = make_domain_embedder(64)
    pooled, mask = torch.randn(2, 24), ra.group_mask(2)
    eager = FluxEngine(tr, emb)(refany3d_branches(2), mask, pooled)
    compiled = FluxEngine(tr, emb, compile=True)
    first = compiled(refany3d_branches(2), mask, pooled)
    again = compiled(refany3d_branches(2, t=torch.tensor([0.3, 0.7])), mask, pooled)
    assert max_diff(first, eager) <= TOL and max_diff(again, eager) <= TOL


def test_bfl_layout_with_side_loras_batched_equals_per_branch(tmp_path):
    """ComfyUI's Flux module (fused qkv / linear1, side LoRAs beside the host's layers): the
    batched forward equals the per-branch one for RefAny3D at 8 views, masked and unmasked."""
    from comfy_native import native_model
    from realiz3d.engine.bfl_layers import BFLFluxLayers
    from realiz3d.loading import tiny_components
    from realiz3d.refany3d import attach_refany3d
    from realiz3d.refany3d.tiny_weights import write_tiny_refany3d
    pipe = tiny_components(seed=0, tokenizer_dir=str(tmp_path / "tok")).pipeline()
    paths = write_tiny_refany3d(str(tmp_path / "w"), pipe.transformer, seed=10)
    dm = native_model(pipe.transformer).model.diffusion_model
    weights = attach_refany3d(dm, *paths)
    L = BFLFluxLayers(dm, side=weights.side)
    g = torch.Generator().manual_seed(2)
    n_views, B = 8, 1
    ids = image_ids(4, 4)

    def branches():
        gg = torch.Generator().manual_seed(3)
        return ra.build_branches(torch.randn(B, 5, 64, generator=gg), torch.zeros(5, 3), torch.tensor([0.6]),
                                 torch.tensor([3.5]), torch.randn(B, 16, 64, generator=gg),
                                 torch.randn(B, 16, 64, generator=gg), ids, torch.randn(B, 16, 4, 64, generator=gg),
                                 ra.condition_ids(image_ids(2, 2), 32), torch.ones(B),
                                 [weights.resolve(a) for a in ra.adapters(n_views)])
    pooled = torch.randn(B, 32, generator=g)
    for mask in (ra.group_mask(n_views), None):
        a = FluxEngine(L, weights.domain_embedder)(branches(), mask, pooled)
        b = reference(L, weights.domain_embedder)(branches(), mask, pooled)
        assert max_diff(a, b) <= TOL
    assert len(FluxEngine(L, weights.domain_embedder).layout(branches(), ra.group_mask(n_views)).streams) == 5


def test_masks_made_in_inference_mode_work():
    """ComfyUI runs nodes under torch.inference_mode: its tensors have no version counter."""
    tr, emb = refany3d_model()
    with torch.inference_mode():
        mask, pooled = ra.group_mask(2), torch.randn(2, 24)
        a = FluxEngine(tr, emb)(refany3d_branches(2), mask, pooled)
    b = reference(tr, emb)(refany3d_branches(2), ra.group_mask(2), pooled.clone())
    assert max_diff(a, b) <= TOL
