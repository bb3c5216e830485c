"""RefAny3D's LoRAs as the reference trains them: exactly SPEC.md section 2's modules (never the
transformer's top-level proj_out), peft's "gaussian" init, and Prodigy with the reference's
use_bias_correction / safeguard_warmup / weight_decay 0.01."""
import os
import sys
import types

import pytest
import torch
from safetensors.torch import load_file

from training_helpers import base_config, tiny_pipe
from realiz3d.renderers import InputError
from realiz3d.training import load_config, make_recipe
from realiz3d.training.config import dump_config
from realiz3d.training.lora import add_lora, lora_parameters, remove_lora, save_lora
from realiz3d.training.recipes import DOMAIN, REFERENCE, TARGET
from realiz3d.training.trainer import make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "training", "configs")

# SPEC.md section 2, written out for the tiny model (2 double blocks, 2 single blocks): x_embedder;
# double blocks norm1.linear, attn.to_q/k/v, attn.to_out.0, ff.net.2; single blocks norm.linear,
# proj_mlp, proj_out, attn.to_q/k/v
DOUBLE = ["norm1.linear", "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.2"]
SINGLE = ["norm.linear", "proj_mlp", "proj_out", "attn.to_q", "attn.to_k", "attn.to_v"]
SPEC_MODULES = ({"x_embedder"} | {f"transformer_blocks.{i}.{m}" for i in range(2) for m in DOUBLE}
                | {f"single_transformer_blocks.{i}.{m}" for i in range(2) for m in SINGLE})


def file_modules(path) -> set:
    return {k.removeprefix("transformer.").split(".lora_")[0] for k in load_file(path)}


def test_refany3d_loras_written_by_the_pack_adapt_exactly_specs_modules(tmp_path):
    from realiz3d.refany3d.tiny_weights import write_tiny_refany3d

    pipe = tiny_pipe()
    c = pipe.transformer.config
    assert (c.num_layers, c.num_single_layers) == (2, 2)
    # the tiny "published" files
    default, coord, _ = write_tiny_refany3d(str(tmp_path / "tiny"), pipe.transformer, rank=4)
    for path in (default, coord):
        assert file_modules(path) == SPEC_MODULES
    # the training recipe's outputs
    cfg = load_config(base_config(tmp_path, "refany3d"))
    recipe = make_recipe(cfg, pipe, "cpu")
    for adapter in (REFERENCE, DOMAIN):
        path = save_lora(pipe.transformer, adapter, str(tmp_path / f"{adapter}.safetensors"))
        assert file_modules(path) == SPEC_MODULES
        assert "proj_out" not in file_modules(path) and "norm_out.linear" not in file_modules(path)
    recipe.release()
    # stage 2's LoRAs use the same default
    stage2 = load_config(base_config(tmp_path, "stage2", stage2={"baseline": True}))
    recipe = make_recipe(stage2, pipe, "cpu")
    path = save_lora(pipe.transformer, TARGET, str(tmp_path / "target.safetensors"))
    assert file_modules(path) == SPEC_MODULES
    recipe.release()


def test_lora_targets_accept_a_regex_or_a_list(tmp_path):
    default = load_config(None).lora.targets
    assert isinstance(default, str)
    assert load_config(os.path.join(CONFIGS, "refany3d.yaml")).lora.targets == default
    assert load_config({"lora": {"targets": ["attn.to_q", "proj_out"]}}).lora.targets == ["attn.to_q", "proj_out"]
    assert load_config({"lora": {"targets": r"x_embedder"}}).lora.targets == "x_embedder"
    for bad in ("(unclosed", [], [""], 3):
        with pytest.raises(InputError) as e:
            load_config({"lora": {"targets": bad}})
        assert e.value.input_name == "lora.targets"
    import yaml
    assert load_config(yaml.safe_load(dump_config(load_config(None)))).lora.targets == default   # round trip
    # a list keeps peft's suffix rule, which also catches the top-level proj_out
    pipe = tiny_pipe()
    add_lora(pipe.transformer, "listed", 4, 4, ["proj_out"])
    names = {n.split(".lora_")[0] for n in lora_parameters(pipe.transformer, "listed")}
    assert "proj_out" in names and "single_transformer_blocks.0.proj_out" in names
    remove_lora(pipe.transformer, ["listed"])


def lora_a_std(transformer, adapter, in_features) -> float:
    a = [p for n, p in lora_parameters(transformer, adapter).items() if "lora_A" in n]
    b = [p for n, p in lora_parameters(transformer, adapter).items() if "lora_B" in n]
    assert a and b and all(torch.count_nonzero(p) == 0 for p in b)        # B starts at zero: identity
    return float(torch.cat([p.detach().flatten() for p in a if p.shape[1] == in_features]).std())


def test_refany3d_loras_start_with_pefts_gaussian_init(tmp_path):
    rank, pipe = 4, tiny_pipe()
    width = pipe.transformer.config.num_attention_heads * pipe.transformer.config.attention_head_dim
    cfg = load_config(base_config(tmp_path, "refany3d"))
    assert cfg.lora.init == "auto" and cfg.lora.peft_init("refany3d") == "gaussian"
    torch.manual_seed(0)
    recipe = make_recipe(cfg, pipe, "cpu")
    for adapter in (REFERENCE, DOMAIN):                       # gaussian: lora_A ~ N(0, 1 / rank)
        assert abs(lora_a_std(pipe.transformer, adapter, width) - 1 / rank) < 0.1 / rank
    recipe.release()
    kaiming = 1 / (3 * width) ** 0.5                          # peft's default: kaiming_uniform(a=sqrt(5))
    for recipe_name, overrides in (("stage2", {"stage2": {"baseline": True}}),
                                   ("refany3d", {"lora": {"rank": rank, "alpha": 8, "init": "kaiming"}})):
        recipe = make_recipe(load_config(base_config(tmp_path, recipe_name, **overrides)), pipe, "cpu")
        adapter = TARGET if recipe_name == "stage2" else REFERENCE
        assert abs(lora_a_std(pipe.transformer, adapter, width) - kaiming) < 0.1 * kaiming
        recipe.release()
    stage2 = load_config(base_config(tmp_path, "stage2", lora={"init": "gaussian"}, stage2={"baseline": True}))
    assert stage2.lora.peft_init("stage2") == "gaussian"
    with pytest.raises(InputError) as e:
        load_config({"lora": {"init": "xavier"}})
    assert e.value.input_name == "lora.init"


class FakeProdigy(torch.optim.SGD):
    """Records the arguments make_optimizer gives prodigyopt.Prodigy."""

    def __init__(self, params, **kwargs):
        self.kwargs = kwargs
        super().__init__(params, lr=kwargs["lr"])


def test_refany3d_recipe_uses_prodigy_with_the_references_settings(monkeypatch):
    monkeypatch.setitem(sys.modules, "prodigyopt", types.SimpleNamespace(Prodigy=FakeProdigy))
    params = [torch.nn.Parameter(torch.zeros(2))]
    cfg = load_config(os.path.join(CONFIGS, "refany3d.yaml"))        # the shipped RefAny3D recipe
    assert cfg.train.optimizer == "prodigy"
    kw = make_optimizer(cfg, params).kwargs
    assert kw["lr"] == 1.0 and kw["weight_decay"] == 0.01
    assert kw["use_bias_correction"] is True and kw["safeguard_warmup"] is True
    # the same from the defaults of any refany3d config that names Prodigy, and switchable
    cfg = load_config({"recipe": "refany3d", "train": {"optimizer": "prodigy", "lr": 1.0}})
    kw = make_optimizer(cfg, params).kwargs
    assert (kw["weight_decay"], kw["use_bias_correction"], kw["safeguard_warmup"]) == (0.01, True, True)
    cfg = load_config({"recipe": "refany3d", "train": {"optimizer": "prodigy", "weight_decay": 0.0,
                                                       "prodigy_bias_correction": False,
                                                       "prodigy_safeguard_warmup": False}})
    kw = make_optimizer(cfg, params).kwargs
    assert (kw["weight_decay"], kw["use_bias_correction"], kw["safeguard_warmup"]) == (0.0, False, False)
    assert load_config({"recipe": "stage1"}).train.weight_decay == 1e-4        # Realiz3D's default unchanged
    assert load_config({"recipe": "refany3d"}).train.weight_decay == 0.01


def test_real_prodigy_takes_the_settings():
    pytest.importorskip("prodigyopt")
    cfg = load_config(os.path.join(CONFIGS, "refany3d.yaml"))
    group = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))]).param_groups[0]
    assert group["use_bias_correction"] and group["safeguard_warmup"] and group["weight_decay"] == 0.01
