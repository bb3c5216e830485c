"""A LoRA file's alpha (SPEC.md section 2's files are diffusers LoRAs): read from the file as
diffusers reads it (peft LoraConfig metadata, or per-layer ``.alpha`` keys), and applied the same
on the peft path (attach_lora), the side-LoRA path (ComfyUI's MODEL) and when training starts
from a file; equal to diffusers' own ``FluxPipeline.load_lora_weights``."""
import copy
import os

import pytest
import torch
from diffusers import FluxPipeline
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from realiz3d.engine.lora import LoraLayer, apply_linear
from realiz3d.engine.lora_files import attach_lora, read_lora
from realiz3d.loading import tiny_components
from realiz3d.loading.bfl_keys import bfl_lora_target
from realiz3d.refany3d.lora_targets import LORA_TARGET_MODULES

RANK = 4


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return tiny_components(seed=0, tokenizer_dir=str(tmp_path_factory.mktemp("tok"))).pipeline()


def write_lora(folder, transformer, name, alpha, how="metadata", seed=0, rank=RANK, double_b=False):
    """A rank-``rank`` LoRA on RefAny3D's modules with random A and B, written by diffusers' saver.
    how: "metadata" (save_lora_weights(..., transformer_lora_adapter_metadata=LoraConfig)),
    "alpha_keys" (per-layer ``transformer.<module>.alpha`` tensors, kohya style) or "none"."""
    donor = copy.deepcopy(transformer)
    donor.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGET_MODULES), adapter_name="x")
    g = torch.Generator().manual_seed(seed)
    for n, p in donor.named_parameters():
        if ".x." in n and ".lora_" in n:
            p.data = torch.randn(p.shape, generator=g) * 0.05 * (2.0 if double_b and "lora_B" in n else 1.0)
    meta = donor.peft_config["x"].to_dict() if how == "metadata" else None
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(donor, adapter_name="x"),
                                   weight_name=f"{name}.safetensors", transformer_lora_adapter_metadata=meta)
    path = os.path.join(folder, f"{name}.safetensors")
    if how == "alpha_keys":
        sd = load_file(path)
        for k in [k for k in sd if k.endswith(".lora_A.weight")]:
            sd[k.replace(".lora_A.weight", ".alpha")] = torch.tensor(float(alpha))
        save_file(sd, path, {"format": "pt"})
    return path


def file_deltas(path):
    """{module: lora_B @ lora_A} of a file, unscaled."""
    sd = load_file(path)
    return {k.removeprefix("transformer.").split(".lora_A.")[0]: sd[k.replace(".lora_A.", ".lora_B.")] @ sd[k]
            for k in sd if ".lora_A." in k}


def peft_deltas(transformer, adapter):
    """{module: the weight update peft applies for ``adapter``} (scaling included)."""
    out = {}
    for name, m in transformer.named_modules():
        if isinstance(m, LoraLayer) and adapter in m.lora_A:
            out[name] = m.lora_B[adapter].weight @ m.lora_A[adapter].weight * m.scaling[adapter]
    return out


def engine_deltas(transformer, adapter):
    """{module: update} as the engine applies it (apply_linear with the adapter), probed with I."""
    out = {}
    for name, m in transformer.named_modules():
        if isinstance(m, LoraLayer) and adapter in m.lora_A:
            eye = torch.eye(m.base_layer.in_features)
            with torch.no_grad():
                out[name] = (apply_linear(m, eye, (adapter,)) - m.base_layer(eye)).T
    return out


@pytest.mark.parametrize("how", ["metadata", "alpha_keys"])
def test_rank4_alpha8_loads_at_scale_2_on_the_peft_path_as_diffusers(pipe, tmp_path, how):
    path = write_lora(str(tmp_path), pipe.transformer, "a8", alpha=8, how=how)
    state = read_lora(path, "lora")
    expected = {m: 2.0 * d for m, d in file_deltas(path).items()}
    assert set(state.scales) == set(expected) and all(s == 2.0 for s in state.scales.values())
    assert "proj_out" not in expected and len(expected) == 25
    # diffusers' own loader
    theirs = copy.deepcopy(pipe)
    theirs.load_lora_weights(path, adapter_name="d")
    diffusers_d = peft_deltas(theirs.transformer, "d")
    # the pack's
    tr = copy.deepcopy(pipe.transformer)
    adapter = attach_lora(tr, path, "ref", "lora")
    ours = engine_deltas(tr, adapter)
    assert set(ours) == set(diffusers_d) == set(expected)
    for m, d in expected.items():
        assert torch.allclose(ours[m], d, atol=1e-6), m
        assert torch.allclose(diffusers_d[m], d, atol=1e-6), m
    # the same as a rank-4 alpha-4 file whose B is doubled
    doubled = write_lora(str(tmp_path), pipe.transformer, "a4", alpha=4, how=how, double_b=True)
    tr2 = copy.deepcopy(pipe.transformer)
    other = engine_deltas(tr2, attach_lora(tr2, doubled, "ref", "lora"))
    for m, d in ours.items():
        assert torch.allclose(other[m], d, atol=1e-6), m


@pytest.mark.parametrize("how", ["none", "metadata"])
def test_published_alpha_equal_rank_files_keep_scale_1(pipe, tmp_path, how):
    path = write_lora(str(tmp_path), pipe.transformer, "p16", alpha=16, rank=16, how=how)
    state = read_lora(path, "lora")
    assert state.scales and all(s == 1.0 for s in state.scales.values())
    tr = copy.deepcopy(pipe.transformer)
    ours = engine_deltas(tr, attach_lora(tr, path, "ref", "lora"))
    theirs = copy.deepcopy(pipe)
    theirs.load_lora_weights(path, adapter_name="d")
    diffusers_d = peft_deltas(theirs.transformer, "d")
    for m, d in file_deltas(path).items():
        assert torch.allclose(ours[m], d, atol=1e-6) and torch.allclose(diffusers_d[m], d, atol=1e-6), m


def side_deltas(side, adapter, layers, hidden):
    """{diffusers module: update} as SideLoRAs applies it on the BFL model, probed with I."""
    out = {}
    for bfl_name, by_adapter in side.layers.items():
        for part in by_adapter.get(adapter, ()):
            module = layers.module_of(bfl_name)
            eye = torch.eye(module.in_features)
            full = side.apply(bfl_name, torch.zeros(module.in_features, module.out_features), eye, (adapter,))
            out.setdefault(bfl_name, []).append((part.offset, full[:, part.offset:part.offset + part.up.shape[0]].T))
    return out


def expected_side(path, scale, hidden):
    """The file's deltas (times ``scale``) keyed as side_deltas keys them."""
    out = {}
    for m, d in file_deltas(path).items():
        bfl_name, index, swap = bfl_lora_target(m)
        assert not swap
        out.setdefault(bfl_name, []).append((index * hidden, scale * d))
    return out


@pytest.mark.parametrize("alpha,rank,scale", [(8, 4, 2.0), (16, 16, 1.0)])
def test_side_loras_on_the_native_model_apply_the_files_alpha(pipe, tmp_path, alpha, rank, scale):
    from comfy_native import import_comfy, native_model
    import_comfy()
    from realiz3d.engine.layers import flux_layers
    from realiz3d.refany3d import attach_refany3d
    from realiz3d.refany3d.domain_embedder import make_domain_embedder

    default = write_lora(str(tmp_path), pipe.transformer, "default", alpha=alpha, rank=rank, seed=1)
    coord = write_lora(str(tmp_path), pipe.transformer, "coord", alpha=alpha, rank=rank, how="alpha_keys", seed=2)
    c = pipe.transformer.config
    embedder = str(tmp_path / "domain_embedder.pth")
    torch.save(make_domain_embedder(c.num_attention_heads * c.attention_head_dim).state_dict(), embedder)
    dm = native_model(pipe.transformer).model.diffusion_model
    weights = attach_refany3d(dm, default, coord, embedder)
    layers = flux_layers(dm)
    for logical, path in (("default", default), ("coord", coord)):
        got, want = side_deltas(weights.side, logical, layers, layers.hidden), expected_side(path, scale, layers.hidden)
        assert set(got) == set(want)
        for bfl_name, parts in want.items():
            got_parts = dict(got[bfl_name])
            for offset, d in parts:
                assert torch.allclose(got_parts[offset], d, atol=1e-6), (logical, bfl_name, offset)


def test_training_starts_from_a_file_with_its_alpha(tmp_path):
    from training_helpers import base_config, tiny_pipe
    from realiz3d.refany3d.domain_embedder import make_domain_embedder
    from realiz3d.training import load_config, make_recipe
    from realiz3d.training.recipes import DOMAIN, REFERENCE

    pipe = tiny_pipe()
    folder = str(tmp_path / "init")
    default = write_lora(folder, pipe.transformer, "default", alpha=8, seed=1)                  # metadata
    coord = write_lora(folder, pipe.transformer, "coord", alpha=8, how="alpha_keys", seed=2)    # .alpha keys
    c = pipe.transformer.config
    torch.save(make_domain_embedder(c.num_attention_heads * c.attention_head_dim).state_dict(),
               os.path.join(folder, "domain_embedder.pth"))
    for lora_alpha in (8, 4):                                      # the adapter's own scale 2, then 1
        cfg = load_config(base_config(tmp_path, "refany3d", refany3d={"init_from": folder},
                                      lora={"rank": RANK, "alpha": lora_alpha}))
        recipe = make_recipe(cfg, pipe, "cpu")
        for adapter, path in ((REFERENCE, default), (DOMAIN, coord)):
            ours, want = peft_deltas(pipe.transformer, adapter), file_deltas(path)
            assert set(ours) == set(want)
            for m, d in want.items():
                assert torch.allclose(ours[m], 2.0 * d, atol=1e-6), (adapter, m)
        recipe.release()


def test_load_control_lora_node_on_a_host_model_applies_the_files_alpha(pipe, tmp_path, monkeypatch):
    from comfy_native import import_comfy, native_model
    import_comfy()
    from realiz3d.engine.layers import flux_layers
    from realiz3d.nodes import realiz3d_nodes

    path = write_lora(str(tmp_path), pipe.transformer, "control", alpha=8, seed=5)
    monkeypatch.setattr(realiz3d_nodes, "model_path", lambda folder, name, input_name: str(tmp_path / name))
    patcher = native_model(pipe.transformer)
    out = realiz3d_nodes.LoadControlLoRA.execute(patcher, "control.safetensors")
    (entry,) = out.result[0] if hasattr(out, "result") else out[0]
    layers = flux_layers(patcher.model.diffusion_model)
    got, want = side_deltas(entry.side, entry.adapter, layers, layers.hidden), expected_side(path, 2.0, layers.hidden)
    assert set(got) == set(want)
    for bfl_name, parts in want.items():
        got_parts = dict(got[bfl_name])
        for offset, d in parts:
            assert torch.allclose(got_parts[offset], d, atol=1e-6), (bfl_name, offset)
