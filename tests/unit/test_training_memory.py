"""The memory plan (training/memory.py): a pure estimate from the layout, checked before the first
step, with what would fit offered when it does not."""
import json
import os

import pytest
import torch

from realiz3d.renderers.errors import InputError
from realiz3d.training import load_config
from realiz3d.training.memory import (GiB, base_parameters, check_fits, fitting_options, lora_parameters,
                                      training_memory)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLUX = {"num_double": 19, "num_single": 38, "hidden": 3072}
SHIFTERS = {"shifters": "s.safetensors"}


def cfg(recipe, **sections):
    raw = {"recipe": recipe, "train": {"gradient_checkpointing": True, **sections.pop("train", {})}, **sections}
    if recipe == "stage2":
        raw.setdefault("stage2", {}).update(SHIFTERS)
        raw.setdefault("data", {}).setdefault("controls", ["normal"])
    return load_config(raw)


def meta_flux():
    from diffusers import FluxTransformer2DModel
    with open(os.path.join(ROOT, "loading", "configs", "flux1-dev_transformer.json")) as f:
        config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    with torch.device("meta"):
        return FluxTransformer2DModel(**config)


def test_parameter_counts_are_flux1s():
    from realiz3d.refany3d.lora_targets import is_target

    model = meta_flux()
    assert abs(base_parameters(FLUX) - sum(p.numel() for p in model.parameters())) < 1e-3 * base_parameters(FLUX)
    lora = sum(16 * (m.in_features + m.out_features) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and is_target(n))
    assert lora_parameters(FLUX, 16) == lora


def test_stage1_and_stage2_fit_24_gb_with_fp8_weights():
    for c in (cfg("stage1"), cfg("stage2")):
        est = training_memory(FLUX, c, weight_bytes=1)
        assert est.total <= 24 * GiB, (c.recipe, est.describe())
        assert est.parts["weights"] < 12.5 * GiB
    # checkpointing is what makes it fit: without it the activations alone are several times larger
    off = training_memory(FLUX, cfg("stage2"), weight_bytes=1, checkpointing=False)
    on = training_memory(FLUX, cfg("stage2"), weight_bytes=1)
    assert off.parts["activations"] > 5 * on.parts["activations"]
    # full fine-tuning at FLUX size does not fit one 24 GB GPU
    full = training_memory(FLUX, cfg("stage2", stage2={"full_finetune": True}, model={"dtype": "bf16"}))
    assert full.total > 80 * GiB


def test_refany3d_offers_fewer_views_or_smaller_conditions():
    c = cfg("refany3d")
    eight = training_memory(FLUX, c, weight_bytes=1)
    four = training_memory(FLUX, c, weight_bytes=1, n_views=4)
    small = training_memory(FLUX, c, weight_bytes=1, condition_size=256)
    assert eight.tokens == 512 + 2 * 1024 + 16 * 1024 and four.total < eight.total and small.total < eight.total
    budget = (four.total + eight.total) // 2
    options = fitting_options(FLUX, c, budget, weight_bytes=1)
    assert any("views" in o for o in options) and any("condition size" in o for o in options)
    assert "7 views" in " ".join(options) or "6 views" in " ".join(options) or "5 views" in " ".join(options)


def test_the_check_before_the_first_step():
    c = cfg("refany3d", train={"gradient_checkpointing": False})
    need = training_memory(FLUX, c, weight_bytes=1).total
    with pytest.raises(InputError) as e:
        check_fits(FLUX, c, free_bytes=need // 3, resident_weight_bytes=0, weight_bytes=1)
    msg = str(e.value)
    assert e.value.input_name == "memory" and "GiB" in msg and "gradient checkpointing" in msg
    assert check_fits(FLUX, c, free_bytes=need, resident_weight_bytes=0, weight_bytes=1).total == need
    # weights already on the device are not asked for twice
    w = training_memory(FLUX, c, weight_bytes=1).parts["weights"]
    check_fits(FLUX, c, free_bytes=need - w, resident_weight_bytes=w, weight_bytes=1)
    logged = []
    warn = load_config({"recipe": "refany3d", "train": {"memory_check": "warn"}})
    check_fits(FLUX, warn, free_bytes=GiB, resident_weight_bytes=0, weight_bytes=1, log=logged.append)
    assert logged and "memory" in logged[0]
    check_fits(FLUX, load_config({"recipe": "refany3d", "train": {"memory_check": "off"}}), GiB, 0, 1)
