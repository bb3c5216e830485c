"""Realiz3D domain shifters and schedules on the engine."""
import pytest
import torch

from realiz3d.adapters import DomainShifters, ShifterConfig, load_shifters, make_schedule, save_shifters
from realiz3d.engine import Branch, FluxEngine
from realiz3d.renderers import InputError
from test_engine import image_ids, inputs, tiny_transformer

NB = 4   # the tiny transformer's 2 double + 2 single blocks


def run(tr, shifters, domains, trace=None, a=None):
    a = a or inputs()
    g = torch.full((2,), 3.5)
    cond = torch.randn(2, 20, 16, generator=torch.Generator().manual_seed(5))
    branches = [Branch(a["txt"], a["txt_ids"], a["t"], g, is_text=True),
                Branch(a["x"], a["ids"], a["t"], g, block_domains=domains),
                Branch(cond, image_ids(4, 5, -5), torch.zeros(2), torch.ones(2))]
    return FluxEngine(tr, shifters=shifters, trace=trace)(branches, None, a["pooled"], outputs=[1])[1]


def trained(cfg, seed=0):
    s = DomainShifters(cfg)
    g = torch.Generator().manual_seed(seed)
    for p in s.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.1
    return s


@pytest.mark.parametrize("variant", ["bias", "token"])
def test_untrained_shifters_change_nothing(variant):
    tr = tiny_transformer()
    cfg = ShifterConfig.for_transformer(tr, rank=4, embed_dim=8, variant=variant)
    base = FluxEngine(tr)([Branch(inputs()["txt"], torch.zeros(7, 3), inputs()["t"], torch.full((2,), 3.5), is_text=True),
                           Branch(inputs()["x"], inputs()["ids"], inputs()["t"], torch.full((2,), 3.5))],
                          None, inputs()["pooled"])[1]
    a = inputs()
    out = FluxEngine(tr, shifters=DomainShifters(cfg))(
        [Branch(a["txt"], a["txt_ids"], a["t"], torch.full((2,), 3.5), is_text=True),
         Branch(a["x"], a["ids"], a["t"], torch.full((2,), 3.5), block_domains=[0, 1, 0, 1])], None, a["pooled"])[1]
    assert torch.equal(out, base)
    assert (run(tr, trained(cfg), [0, 1, 0, 1]) - base).abs().max() > 1e-3     # trained ones act


def test_precomputed_vectors_equal_the_module():
    tr = tiny_transformer()
    shifters = trained(ShifterConfig.for_transformer(tr, rank=4, embed_dim=8))
    table = shifters.precompute()
    x = torch.randn(2, 5, 64)
    for b, block in enumerate(shifters.blocks):
        for d in (0, 1):
            assert (block(x, torch.tensor([d, d])) - (x + table[b, d])).abs().max() <= 1e-6
    fast = run(tr, shifters, [1, 0, 1, 0])
    engine = FluxEngine(tr, shifters=shifters)
    engine.shift_table = None                                   # force the per-call module path
    a = inputs()
    g = torch.full((2,), 3.5)
    cond = torch.randn(2, 20, 16, generator=torch.Generator().manual_seed(5))
    slow = engine([Branch(a["txt"], a["txt_ids"], a["t"], g, is_text=True),
                   Branch(a["x"], a["ids"], a["t"], g, block_domains=[1, 0, 1, 0]),
                   Branch(cond, image_ids(4, 5, -5), torch.zeros(2), torch.ones(2))], None, a["pooled"], [1])[1]
    assert (fast - slow).abs().max() <= 1e-5


@pytest.mark.parametrize("preset,kwargs,expected", [
    ("real", {}, lambda s, b: "real"),
    ("synthetic", {}, lambda s, b: "synthetic"),
    ("layer-aware", {"k_layers": 3}, lambda s, b: "synthetic" if b < 3 else "real"),
    ("step-switch", {"switch_fraction": 0.5}, lambda s, b: "synthetic" if s < 2 else "real"),
    ("custom", {"grid_json": '[["real","synthetic","real","synthetic"],["synthetic","synthetic","real","real"],'
                             '["real","real","real","real"],["synthetic","real","synthetic","real"]]'},
     lambda s, b: [["real", "synthetic", "real", "synthetic"], ["synthetic", "synthetic", "real", "real"],
                   ["real"] * 4, ["synthetic", "real", "synthetic", "real"]][s][b]),
])
def test_schedule_puts_the_intended_domain_in_each_block_at_each_step(preset, kwargs, expected):
    tr = tiny_transformer()
    shifters = trained(ShifterConfig.for_transformer(tr, rank=4, embed_dim=8))
    schedule = make_schedule(preset, num_blocks=NB, num_steps=4, **kwargs)
    for step in range(4):
        trace = []
        names = schedule.domains(step, 4, NB)
        run(tr, shifters, [shifters.domain_index(n) for n in names], trace)
        # what the engine applied, read from the engine itself: target branch 1 only, every block once
        assert [(blk, br) for blk, br, _ in trace] == [(blk, 1) for blk in range(NB)]
        applied = [shifters.cfg.domains[d] for _, _, d in trace]
        assert applied == [expected(step, blk) for blk in range(NB)], (step, applied)


@pytest.mark.parametrize("kwargs,name,phrase", [
    (dict(preset="custom", grid_json='["real", "real"]'), "grid", "the model has 4 blocks"),
    (dict(preset="custom", grid_json='[["real"]]'), "grid", "4 blocks"),
    (dict(preset="custom", grid_json='[["real","real","real","real"]]'), "grid", "sampling runs 4 steps"),
    (dict(preset="custom", grid_json='["real","real","painted","real"]'), "grid", "unknown domains"),
    (dict(preset="custom", grid_json="[oops"), "grid", "valid JSON"),
    (dict(preset="layer-aware", k_layers=9), "k_layers", "4 blocks"),
    (dict(preset="step-switch", switch_fraction=1.5), "switch_fraction", "[0, 1]"),
    (dict(preset="sometimes"), "preset", "one of"),
])
def test_bad_schedules(kwargs, name, phrase):
    with pytest.raises(InputError, match=phrase) as err:
        make_schedule(num_blocks=NB, num_steps=4, **kwargs)
    assert err.value.input_name == name


def test_save_load_round_trip_and_layout_check(tmp_path):
    tr = tiny_transformer()
    shifters = trained(ShifterConfig.for_transformer(tr, rank=4, embed_dim=8, variant="token"))
    path = str(tmp_path / "s.safetensors")
    save_shifters(shifters, path)
    loaded = load_shifters(path)
    assert loaded.cfg == shifters.cfg
    x = torch.randn(1, 3, 64)
    assert torch.equal(loaded.blocks[2](x, torch.tensor([1])), shifters.blocks[2](x, torch.tensor([1])))
    other = DomainShifters(ShifterConfig(3, 2, 64, rank=4, embed_dim=8))
    with pytest.raises(InputError, match="3 double \\+ 2 single blocks, hidden 64") as err:
        FluxEngine(tr, shifters=other)
    assert err.value.input_name == "shifter"
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(InputError, match="could not be read"):
        load_shifters(str(tmp_path / "bad.safetensors"))
