"""Training and sampling build the same branches (one builder per method): the branches a
recipe's training step hands the engine and those the sampler hands it, for the same model,
adapters, sizes and domains, agree in everything but their data (names, order, adapters, domain
tags, shifter domains, position ids, condition timesteps and guidance, token shapes, mask)."""
import torch

from realiz3d.adapters import make_schedule
from realiz3d.refany3d import RefAny3DSettings, sample
from realiz3d.refany3d.weights import RefAny3DWeights
from realiz3d.sampling.realiz3d_sampler import Realiz3DSettings, sample_realiz3d
from realiz3d.training import Plan, Sample, load_config, make_recipe
from training_helpers import SIZE, base_config, stage1_shifters, tiny_pipe


def record_forwards(engine_owner, monkeypatch, module=None, attr="FluxEngine"):
    """Branch lists (and masks) of every engine forward: on an engine instance, or on every engine
    a module constructs."""
    calls = []
    if module is not None:
        base = getattr(module, attr)

        class Recording(base):
            def forward(self, branches, mask=None, *args, **kwargs):
                calls.append((list(branches), mask))
                return super().forward(branches, mask, *args, **kwargs)

        monkeypatch.setattr(module, attr, Recording)
    else:
        original = engine_owner.forward

        def forward(branches, mask=None, *args, **kwargs):
            calls.append((list(branches), mask))
            return original(branches, mask, *args, **kwargs)

        monkeypatch.setattr(engine_owner, "forward", forward)
    return calls


def signature(branch) -> tuple:
    """Everything about a branch but its data (tokens) and the targets' timestep and guidance."""
    cond = not branch.is_text and branch.name not in ("target", "target_rgb", "target_points")
    return (branch.name, branch.is_text, tuple(branch.adapters), branch.domain,
            None if branch.block_domains is None else tuple(int(d) for d in branch.block_domains),
            tuple(branch.tokens.shape[1:]), branch.ids.tolist(),
            tuple(branch.timestep.tolist()) if cond else None,
            None if branch.guidance is None or not cond else tuple(branch.guidance.tolist()))


def test_refany3d_training_and_sampling_build_the_same_branches(tmp_path, monkeypatch):
    cfg = load_config(base_config(tmp_path, "refany3d", train={"max_sequence_length": 8}))
    pipe = tiny_pipe()
    recipe = make_recipe(cfg, pipe, "cpu")
    n = cfg.refany3d.n_views
    g = torch.Generator().manual_seed(0)
    rgb, pts = torch.rand(n, SIZE, SIZE, 3, generator=g), torch.rand(n, SIZE, SIZE, 3, generator=g)
    s = Sample(key="t0", domain="real", image=torch.rand(SIZE, SIZE, 3, generator=g), caption="a box",
               point_map=torch.rand(SIZE, SIZE, 3, generator=g), views=(rgb, pts), views_key="box")
    train_calls = record_forwards(recipe.engine, monkeypatch)
    recipe.run_group([s], [Plan()], [torch.Generator().manual_seed(1)])

    import realiz3d.refany3d.sampler as sampler_module
    sample_calls = record_forwards(None, monkeypatch, sampler_module)
    names = {"default": recipe.adapters[3][0], "coord": recipe.adapters[2][0]}     # the recipe's adapter names
    weights = RefAny3DWeights(adapters=names, domain_embedder=recipe.embedder)
    sample(pipe, weights, "a box", rgb, pts, RefAny3DSettings(steps=1, width=SIZE, height=SIZE, image_cfg=1.0,
                                                              condition_latents="mean", max_sequence_length=8))
    (trained, train_mask), (sampled, sample_mask) = train_calls[0], sample_calls[0]
    assert len(trained) == 3 + 2 * n
    assert [signature(b) for b in trained] == [signature(b) for b in sampled]
    assert torch.equal(train_mask.cpu(), sample_mask.cpu())


def test_realiz3d_training_and_sampling_build_the_same_branches(tmp_path, monkeypatch):
    cfg = load_config(base_config(tmp_path, "stage2", stage2={"shifters": stage1_shifters()},
                                  train={"max_sequence_length": 8}))
    pipe = tiny_pipe()
    recipe = make_recipe(cfg, pipe, "cpu")
    g = torch.Generator().manual_seed(0)
    controls = torch.rand(2, SIZE, SIZE, 3, generator=g)
    s = Sample(key="s0", domain="synthetic", image=torch.rand(SIZE, SIZE, 3, generator=g), caption="a render",
               controls=controls)
    plan = recipe.plan(s, torch.Generator().manual_seed(2))
    assert plan.controls and plan.domains is not None
    train_calls = record_forwards(recipe.engine, monkeypatch)
    recipe.run_group([s], [plan], [torch.Generator().manual_seed(1)])

    import realiz3d.sampling.realiz3d_sampler as sampler_module
    sample_calls = record_forwards(None, monkeypatch, sampler_module)
    shifters = recipe.shifters
    synthetic = shifters.domain_index("synthetic")
    assert set(plan.domains) == {synthetic}                      # a synthetic sample: the synthetic domain
    sample_realiz3d(pipe, "a render", controls, Realiz3DSettings(steps=1, width=SIZE, height=SIZE,
                                                                 max_sequence_length=8),
                    recipe.control_adapters, shifters, make_schedule("synthetic"),
                    target_adapters=recipe.target_adapters)
    (trained, train_mask), (sampled, sample_mask) = train_calls[0], sample_calls[0]
    assert len(trained) == 2 + 2 and train_mask is None and sample_mask is None
    assert [signature(b) for b in trained] == [signature(b) for b in sampled]
