"""RefAny3D's layout and its published weight formats, on a tiny transformer."""
import os

import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from peft import LoraConfig, get_peft_model_state_dict

from realiz3d.engine import Branch, FluxEngine
from realiz3d.renderers import InputError
from realiz3d.refany3d import (attach_refany3d, convert_to_safetensors, group_mask, load_domain_embedder,
                               make_domain_embedder)
from realiz3d.refany3d.layout import adapters, domain_tags
from realiz3d.refany3d.lora_targets import LORA_TARGET_MODULES as LORA_TARGETS



def transformer(hidden_heads=2, seed=0):
    torch.manual_seed(seed)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                attention_head_dim=32, num_attention_heads=hidden_heads, joint_attention_dim=48,
                                pooled_projection_dim=24, guidance_embeds=True, axes_dims_rope=(8, 12, 12)).eval()
    for p in tr.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return tr


def test_group_mask_matches_the_reference_rules():
    n = 3
    m = group_mask(n)
    assert m.shape == (9, 9)
    assert m[0].all() and m[1].all()                        # text and target RGB see everything
    assert not m[2, 0] and m[2, 1:].all()                   # point-map target: everything but the text
    for v in range(n):
        for q in (3 + v, 3 + n + v):
            allowed = {0, 1, 2, 3 + v, 3 + n + v}
            assert {j for j in range(9) if m[q, j]} == allowed
    ind = group_mask(n, independent_conditions=True)
    assert not ind[3:, :3].any() and torch.equal(ind[:3], m[:3])
    assert group_mask(n, text_agnostic=False)[2, 0]
    assert domain_tags(2) == [None, 0, 1, 0, 0, 1, 1]
    assert adapters(1) == [(), (), ("coord",), ("default",), ("default", "coord")]


def write_published_files(folder, hidden_heads=2, seed=1):
    """default/coord LoRAs written by diffusers' own saver, and a torch-pickled embedder state dict."""
    tr = transformer(hidden_heads)
    paths = {}
    for i, name in enumerate(("default", "coord")):
        tr.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=LORA_TARGETS), adapter_name=name)
        g = torch.Generator().manual_seed(seed + i)
        for n, p in tr.named_parameters():
            if f".{name}." in n and "lora_B" in n:
                p.data = torch.randn(p.shape, generator=g) * 0.05
        FluxPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(tr, adapter_name=name),
                                       weight_name=f"{name}.safetensors")
        paths[name] = os.path.join(folder, f"{name}.safetensors")
    emb = make_domain_embedder(32 * hidden_heads)
    for p in emb.parameters():
        torch.nn.init.normal_(p, std=0.1)
    paths["embedder"] = os.path.join(folder, "domain_embedder.pth")
    torch.save(emb.state_dict(), paths["embedder"])
    return paths


def run(tr, weights, tag_adapters=True, mask=None, drop=None):
    """Target outputs {1: RGB, 2: point map} for one view; ``drop`` = (branch, 'adapters' | 'tag')
    removes that branch's adapters or domain tag; ``mask`` defaults to RefAny3D's group mask."""
    torch.manual_seed(3)
    txt, x, cond = torch.randn(1, 5, 48), torch.randn(1, 16, 16), torch.randn(2, 16, 16)
    ids = torch.stack([torch.zeros(16), torch.arange(16) // 4, torch.arange(16) % 4], 1).float()
    t, g = torch.tensor([0.5]), torch.tensor([3.5])
    ad = [weights.resolve(a) for a in adapters(1)] if tag_adapters else [()] * 5
    tags = domain_tags(1) if tag_adapters else [None] * 5
    br = [Branch(txt, torch.zeros(5, 3), t, g, is_text=True)]
    br += [Branch(x, ids, t, g, ad[1], tags[1]), Branch(x, ids, t, g, ad[2], tags[2])]
    br += [Branch(cond[k:k + 1], ids - torch.tensor([0, 0, 4.0]), torch.zeros(1), torch.ones(1), ad[3 + k], tags[3 + k])
           for k in range(2)]
    if drop is not None:
        i, what = drop
        br[i].adapters, br[i].domain = ((), br[i].domain) if what == "adapters" else (br[i].adapters, None)
    return FluxEngine(tr, weights.domain_embedder)(br, group_mask(1) if mask is None else mask, torch.randn(1, 24),
                                                   outputs=[1, 2])


def test_published_files_load_and_change_the_output(tmp_path):
    paths = write_published_files(str(tmp_path))
    tr = transformer()
    with torch.no_grad():
        base = tr(hidden_states=torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(0)),
                  encoder_hidden_states=torch.zeros(1, 5, 48), pooled_projections=torch.zeros(1, 24),
                  timestep=torch.tensor([0.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3),
                  guidance=torch.tensor([3.5]), return_dict=False)[0]
    weights = attach_refany3d(tr, paths["default"], paths["coord"], paths["embedder"])
    with torch.no_grad():          # the shared base is untouched for stock forwards
        again = tr(hidden_states=torch.randn(1, 16, 16, generator=torch.Generator().manual_seed(0)),
                   encoder_hidden_states=torch.zeros(1, 5, 48), pooled_projections=torch.zeros(1, 24),
                   timestep=torch.tensor([0.5]), img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3),
                   guidance=torch.tensor([3.5]), return_dict=False)[0]
    assert torch.equal(base, again)
    # every branch attending to itself only: each adapter and tag changes its own branch's output
    # and nothing else
    alone = torch.eye(5, dtype=torch.bool)
    ref = run(tr, weights, mask=alone)
    no_coord = run(tr, weights, mask=alone, drop=(2, "adapters"))       # target point map's Domain-LoRA
    assert (ref[2] - no_coord[2]).abs().max() > 1e-3 and torch.equal(ref[1], no_coord[1])
    no_tag0 = run(tr, weights, mask=alone, drop=(1, "tag"))             # target RGB's domain tag 0
    assert (ref[1] - no_tag0[1]).abs().max() > 1e-4 and torch.equal(ref[2], no_tag0[2])
    no_tag1 = run(tr, weights, mask=alone, drop=(2, "tag"))             # target point map's domain tag 1
    assert (ref[2] - no_tag1[2]).abs().max() > 1e-4 and torch.equal(ref[1], no_tag1[1])
    for view in (3, 4):           # the views' Reference-LoRA reaches the targets through attention only
        assert all(torch.equal(ref[i], run(tr, weights, mask=alone, drop=(view, "adapters"))[i]) for i in (1, 2))
        full, no_ref = run(tr, weights), run(tr, weights, drop=(view, "adapters"))
        assert all((full[i] - no_ref[i]).abs().max() > 1e-5 for i in (1, 2))
    # attaching the same files again injects nothing new
    names = set(weights.adapters.values())
    assert attach_refany3d(tr, paths["default"], paths["coord"], paths["embedder"]).adapters == weights.adapters
    assert len(names) == 2


def test_embedder_pth_loads_weights_only_and_converts(tmp_path):
    paths = write_published_files(str(tmp_path))
    emb = load_domain_embedder(paths["embedder"], 64)
    out = str(tmp_path / "domain_embedder.safetensors")
    convert_to_safetensors(paths["embedder"], out)
    emb2 = load_domain_embedder(out, 64)
    tags = torch.tensor([0, 1])
    assert torch.equal(emb(tags), emb2(tags)) and emb(tags).abs().max() > 0
    # a pickle that would run code is refused by weights_only loading
    evil = tmp_path / "evil.pth"
    torch.save({"0.weight": torch.zeros(2, 256), "x": os.system}, evil)
    with pytest.raises(InputError, match="could not be read"):
        load_domain_embedder(str(evil), 64)


def test_weights_for_another_size_are_refused(tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    paths = write_published_files(str(big), hidden_heads=3)       # hidden 96
    tr = transformer()                                            # hidden 64
    with pytest.raises(InputError, match="hidden size 96") as err:
        load_domain_embedder(paths["embedder"], 64)
    assert err.value.input_name == "domain_embedder"
    small = write_published_files(str(tmp_path))
    with pytest.raises(InputError, match="takes 64 features in this model, the LoRA has 96"):
        attach_refany3d(tr, paths["default"], small["coord"], small["embedder"])


def test_truncated_lora_is_refused(tmp_path):
    paths = write_published_files(str(tmp_path))
    data = open(paths["default"], "rb").read()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated") as err:
        attach_refany3d(transformer(), str(cut), paths["coord"], paths["embedder"])
    assert err.value.input_name == "reference_lora" and "cut.safetensors" in str(err.value)
