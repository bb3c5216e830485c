"""FSDP2 full fine-tuning through accelerate: two CPU processes (gloo) launched with
training/configs/accelerate_fsdp.yaml shard a tiny full fine-tune, agree on every weight, resume
bit for bit, match the data-parallel and the single-process runs, and refuse a LoRA run."""
import json
import os
import subprocess
import sys

import torch
import yaml
from safetensors.torch import load_file

from realiz3d.training import DataOrder, load_config, train
from realiz3d.training.data_order import seed_of
from realiz3d.training.outputs import save_transformer
from training_helpers import (base_config, one_thread, stage1_shifters, tiny_pipe, write_real,  # noqa: F401
                              write_synthetic)

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(os.path.dirname(os.path.dirname(HERE)), "training", "configs", "accelerate_fsdp.yaml")
STEPS, BATCH, WORLD, TAU_B = 4, 2, 2, 3


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def min_frozen_per_step(seed: int, sizes: dict) -> list:
    """The smallest frozen prefix among each step's global batch, drawn as the trainer draws it
    (the plan of a real sample takes the first number of its generator)."""
    order, out = DataOrder(seed, sizes, {"real": 0.5, "synthetic": 0.5}), []
    for step in range(STEPS):
        frozen = []
        for slot, (source, _) in enumerate(order.next(BATCH * WORLD)):
            gen = torch.Generator().manual_seed(seed_of(seed, step, slot))
            frozen.append(int(torch.randint(0, TAU_B + 1, (1,), generator=gen)) if source == "real" else 0)
        out.append(min(frozen))
    return out


def full_config(tmp_path) -> dict:
    sizes = {"real": 4, "synthetic": 4}
    # a seed with a step (after the first) in which no sample trains block 0 or the embedders:
    # FSDP gives them a zero gradient, which must end as no gradient (AdamW skips them, as the
    # single-process run does; a zero gradient would still move them by their momentum)
    seed = next(s for s in range(200) if min_frozen_per_step(s, sizes)[0] == 0
                and max(min_frozen_per_step(s, sizes)[1:]) > 0)
    # real and synthetic samples; tau_b 3 of the tiny model's 4 blocks, so the processes' samples
    # freeze different prefixes; 2 samples per process and step. No clipping: the FSDP and
    # data-parallel runs then compute the same numbers up to the batching of the forward
    return base_config(tmp_path, "stage2", data={"real": write_real(tmp_path / "real", n=sizes["real"]),
                                                  "synthetic": write_synthetic(tmp_path / "syn", n=sizes["synthetic"])},
                       train={"steps": STEPS, "batch_size": BATCH, "lr": 1e-3, "grad_clip": 0.0, "seed": seed},
                       stage2={"shifters": stage1_shifters(), "full_finetune": True, "tau_b": TAU_B},
                       checkpoint={"every": 100, "keep": 3})


def test_the_fsdp_config_is_a_valid_fsdp2_accelerate_config():
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(CONFIG)
    assert str(cfg.distributed_type).endswith("FSDP") and cfg.num_machines == 1 and cfg.num_processes > 1
    assert cfg.fsdp_config["fsdp_version"] == 2 and cfg.fsdp_config["fsdp_reshard_after_forward"] is True


def test_two_processes_shard_a_full_finetune_and_resume_exactly(tmp_path):
    raw = full_config(tmp_path)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    # the pack's own config; on the CPU accelerate keeps MULTI_CPU (gloo) and the trainer sees
    # the launcher's ACCELERATE_USE_FSDP / FSDP_VERSION
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", CONFIG, "--num_processes",
           str(WORLD), "--mixed_precision", "no", "--main_process_port", str(free_port()),
           os.path.join(HERE, "train_worker.py"), "fsdp", str(path), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    r0, r1 = [json.loads((tmp_path / f"fsdp_rank{r}.json").read_text()) for r in (0, 1)]
    assert r0["world"] == r1["world"] == WORLD
    full = r0["full"]
    assert len(full["losses"]) == STEPS and all(abs(v) < 1e3 for v in full["losses"])        # finite
    for run in ("full", "resumed", "checkpointing", "data_parallel"):
        assert r0[run]["digest"] == r1[run]["digest"], run               # every process holds the same weights
        assert r0[run]["losses"] == r1[run]["losses"], run
        assert r0[run]["unsharded"] and r1[run]["unsharded"], run        # given back as plain tensors
    assert full["outputs"] == ["loss_curve", "shifters", "transformer"] and not r1["full"]["outputs"]
    # stopped after 2 steps, resumed from the gathered checkpoint: bit for bit the uninterrupted run
    assert r0["resumed"]["digest"] == full["digest"] and r0["resumed"]["losses"] == full["losses"]
    # gradient checkpointing (recomputed under FSDP's gathered weights) computes the same numbers
    assert r0["checkpointing"]["digest"] == full["digest"]
    # LoRA under FSDP: refused, naming accelerate and the data-parallel config
    assert r0["lora"].startswith("accelerate") and "accelerate_multi_gpu.yaml" in r0["lora"]
    assert not os.path.exists(tmp_path / "lora" / "control_lora.safetensors")

    fsdp_file = load_file(os.path.join(tmp_path, "full", "transformer.safetensors"))
    dp_file = load_file(os.path.join(tmp_path, "dp", "transformer.safetensors"))
    # one process with the same global batch (4 samples a step) writes the same file (format:
    # keys, dtypes, shapes) with the same weights to 1e-5 (measured 1.2e-6; a zero gradient left
    # on untouched tensors instead of none gives 2e-3). Not bit for bit: it runs the samples of
    # one plan as one batched forward, and sums gradients in another order
    single_raw = {**raw, "train": {**raw["train"], "batch_size": BATCH * WORLD},
                  "output": {"dir": str(tmp_path / "single")}}
    single = train(load_config(single_raw))
    ref = load_file(single.outputs["transformer"])
    assert sorted(ref) == sorted(fsdp_file)
    worst = 0.0
    for key, value in ref.items():
        assert value.dtype == fsdp_file[key].dtype and value.shape == fsdp_file[key].shape, key
        worst = max(worst, float((fsdp_file[key] - value).abs().max()), float((dp_file[key] - value).abs().max()))
    print(f"FSDP / data parallel vs one process: max |difference| {worst:.2e}")
    assert worst < 1e-5, worst
    # an FSDP checkpoint is the single-process format: one process resumes the 2-step run's
    # (the doubled batch per process is a config change, accepted with 'continue anyway')
    cross = train(load_config({**single_raw, "output": {"dir": str(tmp_path / "cross")}}),
                  resume=str(tmp_path / "part" / "checkpoints"), on_change="continue anyway")
    assert cross.losses[:2] == full["losses"][:2] and len(cross.losses) == STEPS
    crossed = load_file(cross.outputs["transformer"])
    assert max(float((crossed[k] - ref[k]).abs().max()) for k in ref) < 1e-5
    # and training changed the weights (the untrained model written the same way)
    save_transformer(tiny_pipe().transformer, str(tmp_path / "untrained.safetensors"))
    untrained = load_file(str(tmp_path / "untrained.safetensors"))
    moved = [k for k in untrained if float((fsdp_file[k] - untrained[k]).abs().max()) > 1e-4]
    print(f"{len(moved)} of {len(untrained)} tensors moved by more than 1e-4; seed {raw['train']['seed']}, "
          f"smallest frozen prefix per step {min_frozen_per_step(raw['train']['seed'], {'real': 4, 'synthetic': 4})}")
    assert len(moved) > len(untrained) // 2, (len(moved), len(untrained))


def test_only_fsdp2_full_finetuning_is_accepted(tmp_path):
    from types import SimpleNamespace

    import pytest
    from realiz3d.renderers.errors import InputError
    from realiz3d.training.fsdp import check_request

    v2, v1 = SimpleNamespace(fsdp_version=2), SimpleNamespace(fsdp_version=1)
    full = load_config(base_config(tmp_path, "stage2", stage2={"full_finetune": True, "shifters": stage1_shifters()}))
    check_request(full, v2)
    for recipe in ("stage2", "stage1", "refany3d"):          # LoRAs, shifters, RefAny3D: data parallel
        cfg = load_config(base_config(tmp_path, recipe, stage2={"shifters": stage1_shifters()}))
        with pytest.raises(InputError, match="accelerate_multi_gpu.yaml") as info:
            check_request(cfg, v2)
        assert getattr(info.value, "input_name", "accelerate") == "accelerate"
    with pytest.raises(InputError, match="fsdp_version: 2"):
        check_request(full, v1)


def test_sharded_memory_divides_the_trained_state():
    from realiz3d.training.fsdp import double_block_parameters, sharded_memory
    from realiz3d.training.memory import GiB, base_parameters, training_memory

    flux = {"num_double": 19, "num_single": 38, "hidden": 3072}
    cfg = load_config({"recipe": "stage2", "stage2": {"full_finetune": True, "shifters": stage1_shifters()},
                       "model": {"dtype": "fp32"}})
    one = training_memory(flux, cfg, weight_bytes=0, compute_bytes=4)
    eight = sharded_memory(flux, cfg, 8, compute_bytes=4)
    assert round(base_parameters(flux) / 1e9, 1) == 11.9
    state = sum(eight.parts[k] for k in ("trainables", "gradients", "optimizer"))
    assert abs(state - 16 * base_parameters(flux) / 8) < 16
    assert eight.parts["activations"] == one.parts["activations"]
    assert eight.parts["gathered"] == 4 * double_block_parameters(flux) * 4
    assert round(state / GiB, 1) == 22.2 and round(eight.total / GiB, 1) == 48.8       # training/README.md
