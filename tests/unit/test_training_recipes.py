"""Training recipes on the tiny model: losses go down, stage 2's frozen parts stay frozen, the
baseline switch really switches everything off, and the files written load for inference."""
import pytest
import torch

from realiz3d.adapters import load_shifters
from realiz3d.engine import FluxEngine
from realiz3d.engine.lora_files import attach_lora, read_lora
from realiz3d.loading import load_transformer
from realiz3d.refany3d import attach_refany3d
from realiz3d.renderers import InputError
from realiz3d.training import MemoryDataset, Plan, Sample, evaluate_loss, load_config, make_recipe, train
from realiz3d.training.data import build_datasets
from training_helpers import (SIZE, base_config, one_thread, stage1_shifters, tiny_pipe,  # noqa: F401
                              write_real, write_synthetic, write_triplets)


def data_for(tmp_path, recipe):
    if recipe == "refany3d":
        return {"refany3d": write_triplets(tmp_path / "tri", n=1)}
    return {"real": write_real(tmp_path / "real", n=1), "synthetic": write_synthetic(tmp_path / "syn", n=1)}


@pytest.mark.parametrize("recipe,extra", [
    ("stage1", {"train": {"lr": 5e-2}}),
    ("stage2", {}),
    ("stage2", {"stage2": {"baseline": True}}),
    ("stage2", {"stage2": {"full_finetune": True}, "train": {"lr": 2e-3}}),
    ("refany3d", {"refany3d": {"prompt_dropout": 0.0, "condition_dropout": 0.0}}),
])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tmp_path, recipe, extra):
    extra = dict(extra)
    train_section = {"steps": 12, "batch_size": 2, **extra.pop("train", {})}
    stage2 = {"shifters": stage1_shifters(), **extra.pop("stage2", {})}
    cfg = load_config(base_config(tmp_path, recipe, data=data_for(tmp_path, recipe), train=train_section,
                                  stage2=stage2, **extra))
    fixed = [ds.load(0) for ds in build_datasets(cfg).values()]
    before = evaluate_loss(cfg, tiny_pipe(), fixed)
    result = train(cfg, tiny_pipe())
    after = evaluate_loss(cfg, tiny_pipe(), fixed, result.parameters)
    assert len(result.losses) == 12 and not result.stopped
    assert after < 0.9 * before, (before, after)


def stage2_recipe(tmp_path, **stage2):
    cfg = load_config(base_config(tmp_path, "stage2", stage2={"shifters": stage1_shifters(), **stage2}))
    torch.manual_seed(0)
    return cfg, make_recipe(cfg, tiny_pipe(), "cpu")


def real_sample(seed=0):
    g = torch.Generator().manual_seed(seed)
    return Sample(key=f"real{seed}", domain="real", image=torch.rand(SIZE, SIZE, 3, generator=g), caption="a photo")


def synthetic_sample(seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    return Sample(key=f"syn{seed}", domain="synthetic", image=torch.rand(SIZE, SIZE, 3, generator=g),
                  caption="a render", controls=torch.rand(2, SIZE, SIZE, 3, generator=g))


def block_grads(recipe):
    """Per engine block (double blocks, then single blocks): does any trainable get a non-zero gradient?"""
    tr = recipe.transformer
    blocks = list(tr.transformer_blocks) + list(tr.single_transformer_blocks)
    out = []
    for block in blocks:
        ids = {id(p) for p in block.parameters()}
        grads = [p.grad for p in recipe.trainables().values() if id(p) in ids]
        assert grads, "every block holds trainables"
        out.append(any(g is not None and bool(g.abs().sum() > 0) for g in grads))
    return out


@pytest.mark.parametrize("full", [False, True])
def test_stage2_real_samples_train_only_the_blocks_after_i(tmp_path, full):
    cfg, recipe = stage2_recipe(tmp_path, full_finetune=full)
    nb = recipe.num_blocks                                            # 2 double + 2 single
    s, r = recipe.S, recipe.R
    trace = []
    recipe.engine.trace = trace
    i = 3
    plan = Plan(frozen=i, domains=(s,) * i + (r,) * (nb - i))
    recipe.run_group([real_sample()], [plan], [torch.Generator().manual_seed(1)]).sum().backward()
    assert block_grads(recipe) == [False] * i + [True] * (nb - i)
    x_embedder = [p for n, p in recipe.trainables().items() if "x_embedder" in n]
    assert all(p.grad is None for p in x_embedder)                # before the first block: no gradient either
    assert [d for _, _, d in trace] == [s] * i + [r] * (nb - i)    # domain reassignment: S before i, R after
    assert all(p.grad is None for p in recipe.shifters.parameters())
    # an optimizer step leaves the weights before block i exactly as they were and moves those after it
    named = recipe.trainables()
    before = {n: p.detach().clone() for n, p in named.items()}
    torch.optim.AdamW(list(named.values()), lr=1e-2).step()
    tr = recipe.transformer
    early = ("x_embedder.", "context_embedder.", "transformer_blocks.0.", "transformer_blocks.1.",
             "single_transformer_blocks.0.")
    moved = 0
    for n, p in named.items():
        name = n.split(".", 1)[1]
        if name.startswith(early):
            assert torch.equal(p, before[n]), n
        elif p.grad is not None and p.grad.abs().sum() > 0:
            assert not torch.equal(p, before[n]), n
            moved += 1
    assert moved > 0
    # the synthetic sample (controls, S everywhere) reaches every block
    for p in named.values():
        p.grad = None
    recipe.step([synthetic_sample()], [torch.Generator().manual_seed(2)], backward=lambda loss: loss.backward())
    assert block_grads(recipe) == [True] * nb
    recipe.release()
    assert tr.x_embedder.weight.requires_grad


def test_stage2_draws_i_up_to_tau_b_and_never_moves_the_shifters(tmp_path):
    cfg, recipe = stage2_recipe(tmp_path)
    draws = {recipe.plan(real_sample(), torch.Generator().manual_seed(k)).frozen for k in range(60)}
    assert draws == {0, 1, 2, 3}                                           # U{0..tau_b}, tau_b = 3
    syn = recipe.plan(synthetic_sample(), torch.Generator().manual_seed(0))
    assert syn.frozen == 0 and syn.controls and syn.domains == (recipe.S,) * recipe.num_blocks
    recipe.release()
    data = {"real": write_real(tmp_path / "real", n=2), "synthetic": write_synthetic(tmp_path / "syn", n=2)}
    cfg = load_config(base_config(tmp_path, "stage2", data=data, stage2={"shifters": stage1_shifters()},
                                  train={"steps": 4, "batch_size": 2}))
    result = train(cfg, tiny_pipe())
    original, written = load_shifters(stage1_shifters()), load_shifters(result.outputs["shifters"])
    for (k, a), (_, b) in zip(original.state_dict().items(), written.state_dict().items()):
        assert torch.equal(a, b), k
    assert not any(n.startswith("shifters.") for n in result.parameters)


def test_baseline_switches_off_shifters_reassignment_and_freezing(tmp_path):
    cfg, recipe = stage2_recipe(tmp_path, baseline=True)
    assert recipe.shifters is None and recipe.engine.shifters is None
    plans = {recipe.plan(real_sample(), torch.Generator().manual_seed(k)) for k in range(30)}
    assert plans == {Plan()}                                              # no freezing, no domains
    assert recipe.plan(synthetic_sample(), torch.Generator()).domains is None
    recipe.engine.trace = trace = []
    recipe.step([real_sample()], [torch.Generator().manual_seed(1)], backward=lambda loss: loss.backward())
    assert trace == [] and all(block_grads(recipe))                       # every block learns from real data
    assert any(p.grad is not None for n, p in recipe.trainables().items() if "x_embedder" in n)
    recipe.release()
    # the same config without the switch does all three
    cfg, full = stage2_recipe(tmp_path)
    assert full.shifters is not None and max(full.plan(real_sample(), torch.Generator().manual_seed(k)).frozen
                                             for k in range(30)) > 0
    full.release()


def test_frozen_blocks_and_checkpointing_keep_the_forward(tmp_path):
    cfg, recipe = stage2_recipe(tmp_path)
    pipe_tr = recipe.transformer
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    plan = Plan(frozen=0, domains=(recipe.S,) * 2 + (recipe.R,) * 2)
    plain = recipe.run_group([real_sample()], [plan], [gen()])
    frozen = recipe.run_group([real_sample()], [Plan(frozen=2, domains=plan.domains)], [gen()])
    assert torch.equal(plain, frozen)                                      # same values, fewer gradients
    plain.sum().backward()
    grads = {n: p.grad.clone() for n, p in recipe.trainables().items() if p.grad is not None}
    for p in recipe.trainables().values():
        p.grad = None
    recipe.engine = FluxEngine(pipe_tr, shifters=recipe.shifters, checkpointing=True)
    recipe.run_group([real_sample()], [plan], [gen()]).sum().backward()
    for n, g in grads.items():
        assert torch.allclose(recipe.trainables()[n].grad, g, atol=1e-6, rtol=1e-5), n
    recipe.release()


def test_lora_outputs_load_for_inference_with_the_trained_effect(tmp_path):
    data = {"real": write_real(tmp_path / "real", n=1), "synthetic": write_synthetic(tmp_path / "syn", n=1)}
    cfg = load_config(base_config(tmp_path, "stage2", data=data, stage2={"shifters": stage1_shifters()},
                                  train={"steps": 3, "lr": 0.05}))               # lora rank 4, alpha 8: scale 2
    pipe = tiny_pipe()
    result = train(cfg, pipe)
    for kind in ("control_lora", "target_lora"):
        state = read_lora(result.outputs[kind], kind)
        assert all(k.startswith("transformer.") for k in state) and any(".lora_B." in k for k in state)
    # the trained recipe's prediction == the engine with the written files attached as plain adapters
    torch.manual_seed(0)
    recipe = make_recipe(cfg, pipe, "cpu")
    with torch.no_grad():
        for n, p in recipe.trainables().items():
            p.copy_(result.parameters[n])
    s, g = synthetic_sample(), torch.Generator
    expected = recipe.run_group([s], [recipe.plan(s, g().manual_seed(5))], [g().manual_seed(5)])
    recipe.release()
    control = attach_lora(pipe.transformer, result.outputs["control_lora"], "control", "control_lora")
    target = attach_lora(pipe.transformer, result.outputs["target_lora"], "target", "target_lora")
    recipe = make_recipe(cfg, pipe, "cpu")                                    # fresh (identity) trainables
    recipe.control_adapters, recipe.target_adapters = (control,), (target,)
    got = recipe.run_group([s], [recipe.plan(s, g().manual_seed(5))], [g().manual_seed(5)])
    recipe.release()
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
    untrained = make_recipe(cfg, tiny_pipe(), "cpu")
    assert not torch.allclose(untrained.run_group([s], [untrained.plan(s, g().manual_seed(5))], [g().manual_seed(5)]),
                              expected, rtol=1e-3)


def test_refany3d_outputs_load_with_attach_refany3d(tmp_path):
    cfg = load_config(base_config(tmp_path, "refany3d", data={"refany3d": write_triplets(tmp_path / "tri", n=1)},
                                  train={"steps": 2}))
    result = train(cfg, tiny_pipe())
    assert set(result.outputs) == {"default", "coord", "domain_embedder", "loss_curve"}
    pipe = tiny_pipe()
    weights = attach_refany3d(pipe.transformer, result.outputs["default"], result.outputs["coord"],
                              result.outputs["domain_embedder"])
    for k, v in weights.domain_embedder.state_dict().items():
        assert torch.equal(v, result.parameters[f"domain_embedder.{k}"]), k
    lora_b = [v for k, v in result.parameters.items() if "train_coord" in k and "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in lora_b)


def test_full_finetune_writes_a_loadable_transformer(tmp_path):
    data = {"real": write_real(tmp_path / "real", n=1), "synthetic": write_synthetic(tmp_path / "syn", n=1)}
    cfg = load_config(base_config(tmp_path, "stage2", data=data, train={"steps": 2, "lr": 1e-3},
                                  stage2={"baseline": True, "full_finetune": True}))
    pipe = tiny_pipe()
    result = train(cfg, pipe)
    loaded = load_transformer(result.outputs["transformer"])
    trained = pipe.transformer.state_dict()
    assert set(loaded.state_dict()) == set(trained)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, trained[k]), k
    assert not torch.equal(trained["x_embedder.weight"], tiny_pipe().transformer.state_dict()["x_embedder.weight"])


def test_text_is_encoded_once_per_caption_and_latents_once_per_sample(tmp_path):
    cfg, recipe = stage2_recipe(tmp_path)
    samples = [real_sample(0), real_sample(1), synthetic_sample(0)]
    for step in range(3):
        recipe.step(samples, [torch.Generator().manual_seed(step * 10 + k) for k in range(3)])
    assert recipe.text.encoded == 2                            # "a photo", "a render"
    assert recipe.latents.encoded == 4                         # 3 targets + 1 set of controls
    recipe.release()


def test_tau_b_beyond_the_model_and_wrong_samples_are_named(tmp_path):
    cfg = load_config(base_config(tmp_path, "stage2", stage2={"shifters": stage1_shifters(), "tau_b": 9}))
    with pytest.raises(InputError) as e:
        make_recipe(cfg, tiny_pipe(), "cpu")
    assert e.value.input_name == "stage2.tau_b" and "4 blocks" in str(e.value)
    cfg = load_config(base_config(tmp_path, "stage2", stage2={"shifters": stage1_shifters()}, train={"steps": 1},
                                  data={"real_ratio": 0.0}))
    bare = Sample(key="bare", domain="synthetic", image=torch.rand(SIZE, SIZE, 3), caption="x")
    with pytest.raises(InputError) as e:
        train(cfg, tiny_pipe(), datasets={"synthetic": MemoryDataset([bare])})
    assert e.value.input_name == "data.controls" and "bare" in str(e.value)
    try:
        import prodigyopt  # noqa: F401
    except ImportError:                                   # without the package: a clear error naming the key
        with pytest.raises(InputError) as e:
            train(load_config(base_config(tmp_path, "stage1", train={"optimizer": "prodigy", "steps": 1})),
                  tiny_pipe(), datasets={"synthetic": MemoryDataset([synthetic_sample()]),
                                         "real": MemoryDataset([real_sample()])})
        assert e.value.input_name == "train.optimizer" and "prodigyopt" in str(e.value)


def test_refany3d_can_start_from_published_weights(tmp_path):
    from realiz3d.engine.lora_files import read_lora as read
    from realiz3d.refany3d.tiny_weights import write_tiny_refany3d
    from realiz3d.training.lora import lora_state_dict
    from realiz3d.training.recipes import DOMAIN, REFERENCE

    pipe = tiny_pipe()
    published = str(tmp_path / "published")
    write_tiny_refany3d(published, pipe.transformer, seed=3, rank=4)      # the published formats (.pth embedder)
    cfg = load_config(base_config(tmp_path, "refany3d", refany3d={"init_from": published}))
    recipe = make_recipe(cfg, pipe, "cpu")                                 # lora rank 4, alpha 8
    for adapter, file in ((REFERENCE, "default"), (DOMAIN, "coord")):
        ours, theirs = lora_state_dict(pipe.transformer, adapter), read(f"{published}/{file}.safetensors", file)
        assert set(ours) == set(theirs)
        for key in (k for k in ours if ".lora_A." in k):
            b = key.replace(".lora_A.", ".lora_B.")
            assert torch.allclose(ours[b] @ ours[key], theirs[b] @ theirs[key], atol=1e-6), key
    published_embedder = torch.load(f"{published}/domain_embedder.pth", weights_only=True)
    for k, v in recipe.embedder.state_dict().items():
        assert torch.equal(v, published_embedder[k]), k
    recipe.release()
    with pytest.raises(InputError) as e:
        make_recipe(load_config(base_config(tmp_path, "refany3d", refany3d={"init_from": published},
                                            lora={"rank": 8})), tiny_pipe(), "cpu")
    assert e.value.input_name == "refany3d.init_from" and "lora.rank" in str(e.value)


def test_latent_cache_is_bounded_and_evicted_latents_are_the_same(tmp_path):
    from realiz3d.training.encode import LatentCache

    pipe = tiny_pipe()
    images = [real_sample(k).image[None] for k in range(4)]
    probe = LatentCache(pipe, "cpu")
    first = [probe.dist(f"s{k}", im) for k, im in enumerate(images)]
    one = LatentCache.entry_bytes(first[0])
    assert one > 0 and probe.bytes == 4 * one                     # unbounded: all four kept

    cache = LatentCache(pipe, "cpu", max_bytes=int(2.5 * one))     # room for two entries
    for rnd in range(2):
        for k, im in enumerate(images):
            mean, std, hw = cache.dist(f"s{k}", im)
            assert torch.equal(mean, first[k][0]) and torch.equal(std, first[k][1]) and hw == first[k][2]
            assert cache.bytes <= cache.max_bytes and len(cache.store) <= 2
            assert cache.bytes == sum(LatentCache.entry_bytes(e) for e in cache.store.values())
    assert cache.encoded == 8                                     # cycling 4 keys through 2 slots: all recomputed
    assert list(cache.store) == ["s2", "s3"]
    cache.dist("s2", images[2])                                   # a hit: no encoding, s2 becomes most recent
    cache.dist("s0", images[0])                                   # evicts s3, the least recently used
    assert cache.encoded == 9 and list(cache.store) == ["s2", "s0"]

    none = LatentCache(pipe, "cpu", max_bytes=0)                  # 0 keeps nothing
    none.dist("s0", images[0]), none.dist("s0", images[0])
    assert none.encoded == 2 and not none.store and none.bytes == 0


def test_latent_cache_bound_comes_from_the_config(tmp_path):
    cfg = load_config(base_config(tmp_path, "stage2", stage2={"shifters": stage1_shifters()},
                                  train={"latent_cache_mb": 3}))
    recipe = make_recipe(cfg, tiny_pipe(), "cpu")
    assert recipe.latents.max_bytes == 3 * 2 ** 20
    recipe.release()
    assert load_config(base_config(tmp_path, "stage1")).train.latent_cache_mb == 4096
    with pytest.raises(InputError) as e:
        load_config(base_config(tmp_path, "stage1", train={"latent_cache_mb": -1}))
    assert e.value.input_name == "train.latent_cache_mb"
