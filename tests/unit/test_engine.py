"""The branched engine: equal to diffusers' Flux, masked attention equal to a dense mask, and
LoRA that stays on its branch."""
import pytest
import torch
from diffusers import FluxTransformer2DModel
from peft import LoraConfig

from realiz3d.engine import Branch, FluxEngine, block_sparse_attention, dense_masked_attention, grouped_attention


def tiny_transformer(guidance=True, seed=0):
    torch.manual_seed(seed)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                attention_head_dim=32, num_attention_heads=2, joint_attention_dim=48,
                                pooled_projection_dim=24, guidance_embeds=guidance, axes_dims_rope=(8, 12, 12)).eval()
    for p in tr.parameters():          # random weights everywhere: zero-init layers would hide bugs
        torch.nn.init.normal_(p, std=0.05)
    return tr


def image_ids(rows, cols, col_offset=0):
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([torch.zeros(rows * cols), r.flatten().float(), c.flatten().float() + col_offset], 1)


def inputs(B=2, Nt=7, rows=4, cols=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(B, rows * cols, 16, generator=g), txt=torch.randn(B, Nt, 48, generator=g),
                pooled=torch.randn(B, 24, generator=g), t=torch.tensor([0.3, 0.7][:B]),
                ids=image_ids(rows, cols), txt_ids=torch.zeros(Nt, 3))


@pytest.mark.parametrize("guidance", [True, False])
def test_equals_diffusers_flux_without_branches(guidance):
    tr, a = tiny_transformer(guidance), inputs()
    g = torch.full((2,), 3.5) if guidance else None
    with torch.no_grad():
        ref = tr(hidden_states=a["x"], encoder_hidden_states=a["txt"], pooled_projections=a["pooled"],
                 timestep=a["t"], img_ids=a["ids"], txt_ids=a["txt_ids"], guidance=g, return_dict=False)[0]
    out = FluxEngine(tr)([Branch(a["txt"], a["txt_ids"], a["t"], g, is_text=True),
                          Branch(a["x"], a["ids"], a["t"], g)], None, a["pooled"])
    assert (out[1] - ref).abs().max() <= 1e-5
    assert ref.abs().max() > 0.1                      # the comparison is not between zeros


def random_qkv(lengths, B=2, H=2, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(B, n, H, D, generator=g) for n in lengths] for _ in range(3)]


@pytest.mark.parametrize("seed", range(4))
def test_grouped_attention_equals_dense_mask(seed):
    lengths = [5, 9, 9, 3, 3, 4, 4]
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(7, 7, generator=g) > 0.5
    mask |= torch.eye(7, dtype=torch.bool)             # every branch sees at least itself
    q, k, v = random_qkv(lengths, seed=seed)
    dense = dense_masked_attention(q, k, v, mask)
    for a, b, c in zip(grouped_attention(q, k, v, mask), dense, block_sparse_attention(q, k, v, mask)):
        assert (a - b).abs().max() <= 1e-5 and (c - b).abs().max() <= 1e-5
    full = grouped_attention(q, k, v, None)
    assert (full[0] - dense_masked_attention(q, k, v, None)[0]).abs().max() <= 1e-5


def test_mask_row_without_keys_is_an_error():
    q, k, v = random_qkv([2, 2])
    with pytest.raises(ValueError, match="attend to no branch"):
        grouped_attention(q, k, v, torch.tensor([[True, True], [False, False]]))


def branched(tr, a, cond_adapters=(), mask=None, attention=None):
    """text, target, and one condition branch (t = 0, shifted columns)."""
    g = torch.full((2,), 3.5)
    cond = torch.randn(2, 20, 16, generator=torch.Generator().manual_seed(5))
    branches = [Branch(a["txt"], a["txt_ids"], a["t"], g, is_text=True), Branch(a["x"], a["ids"], a["t"], g),
                Branch(cond, image_ids(4, 5, col_offset=-5), torch.zeros(2), torch.ones(2), adapters=cond_adapters)]
    return FluxEngine(tr, attention=attention)(branches, mask, a["pooled"], outputs=[1, 2])


def test_engine_grouped_equals_engine_dense():
    tr, a = tiny_transformer(), inputs()
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 0, 1]], dtype=torch.bool)
    fast, ref = branched(tr, a, mask=mask), branched(tr, a, mask=mask, attention=dense_masked_attention)
    assert max((fast[i] - ref[i]).abs().max() for i in fast) <= 1e-5


def add_lora(tr, name, seed):
    tr.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "proj_mlp", "x_embedder"]),
                   adapter_name=name)
    g = torch.Generator().manual_seed(seed)
    for n, p in tr.named_parameters():
        if f"lora_B.{name}" in n:
            p.data = torch.randn(p.shape, generator=g) * 0.1    # peft zero-inits B: make the update real


def test_per_branch_lora_isolation():
    tr, a = tiny_transformer(), inputs()
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)   # target ignores the condition
    base = branched(tr, a, mask=mask)
    add_lora(tr, "default", 1)
    add_lora(tr, "coord", 2)
    no_adapter = branched(tr, a, mask=mask)
    assert torch.equal(no_adapter[1], base[1]) and torch.equal(no_adapter[2], base[2])   # bit-identical
    one = branched(tr, a, ("default",), mask=mask)
    both = branched(tr, a, ("default", "coord"), mask=mask)
    assert torch.equal(one[1], base[1]) and torch.equal(both[1], base[1])   # LoRA stays on its branch
    assert (one[2] - base[2]).abs().max() > 1e-3                             # ... and acts there
    assert (both[2] - one[2]).abs().max() > 1e-3                             # "default+coord" adds coord
    # with a mask that lets the target see the condition, the condition's LoRA reaches it only via attention
    seen = branched(tr, a, ("default",), mask=None)
    assert (seen[1] - branched(tr, a, (), mask=None)[1]).abs().max() > 0


def test_kv_cache_reproduces_the_independent_condition_forward():
    from realiz3d.engine import KVCache
    tr, a = tiny_transformer(), inputs()
    g = torch.full((2,), 3.5)
    gen = torch.Generator().manual_seed(9)
    conds = [torch.randn(2, 20, 16, generator=gen) for _ in range(2)]

    def branches(x, t, cond_tokens):
        return [Branch(a["txt"], a["txt_ids"], t, g, is_text=True), Branch(x, a["ids"], t, g),
                Branch(cond_tokens[0], image_ids(4, 5, -5), torch.zeros(2), torch.ones(2)),
                Branch(cond_tokens[1], image_ids(4, 5, -5), torch.zeros(2), torch.ones(2))]

    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[2:, :2] = False                       # conditions see only themselves and their pair
    engine, cache = FluxEngine(tr), KVCache([2, 3])
    step0 = engine(branches(a["x"], a["t"], conds), mask, a["pooled"], outputs=[1], kv_cache=cache)
    assert torch.equal(step0[1], engine(branches(a["x"], a["t"], conds), mask, a["pooled"], outputs=[1])[1])
    x1, t1 = a["x"] * 0.5 + 0.1, a["t"] * 0.5
    garbage = [torch.full_like(c, 1e3) for c in conds]     # cached branches' tokens are not read again
    cached = engine(branches(x1, t1, garbage), mask, a["pooled"], outputs=[1], kv_cache=cache)
    full = engine(branches(x1, t1, conds), mask, a["pooled"], outputs=[1])
    assert (cached[1] - full[1]).abs().max() <= 1e-5
    # RefAny3D's own mask lets conditions see the targets: caching there is refused, never silent
    with pytest.raises(ValueError, match="cannot be cached exactly"):
        engine(branches(a["x"], a["t"], conds), torch.ones(4, 4, dtype=torch.bool), a["pooled"],
               kv_cache=KVCache([2, 3]))
