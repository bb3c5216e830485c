"""Run by test_training_distributed.py under ``accelerate launch``: trains a tiny config and
writes, per process, a digest of its trained tensors and the samples it drew."""
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from pack_import import import_pack  # noqa: E402

import_pack("realiz3d")

import torch  # noqa: E402

from realiz3d.training import build_datasets, load_config, train  # noqa: E402


def main(config_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    cfg = load_config(config_path)
    datasets = build_datasets(cfg, print)
    drawn = []
    for ds in datasets.values():
        def load(i, _load=ds.load):
            sample = _load(i)
            drawn.append(sample.key)
            return sample
        ds.load = load
    result = train(cfg, datasets=datasets)
    digest = hashlib.sha256()
    for name in sorted(result.parameters):
        digest.update(name.encode())
        digest.update(result.parameters[name].detach().cpu().contiguous().numpy().tobytes())
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"digest": digest.hexdigest(), "drawn": drawn, "losses": result.losses,
                   "world": int(os.environ.get("WORLD_SIZE", "1")), "outputs": sorted(result.outputs)}, f)


def digest_of(parameters: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(parameters):
        digest.update(name.encode())
        digest.update(parameters[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def fsdp_suite(config_path: str, out_dir: str) -> None:
    """Run by test_training_fsdp.py under ``accelerate launch`` with the FSDP config: a full
    fine-tune, the same run stopped at step 2 and resumed, the same run with gradient
    checkpointing, the same run data parallel (FSDP turned off for it), and a LoRA run (refused).
    Writes fsdp_rank{R}.json per process."""
    from realiz3d.renderers.errors import InputError

    torch.set_num_threads(1)
    steps = load_config(config_path).train.steps
    report = {}

    def run(name, resume=None, **overrides):
        cfg = load_config(config_path, overrides={"output.dir": os.path.join(out_dir, name), **overrides})
        result = train(cfg, resume=resume)
        return {"digest": digest_of(result.parameters), "losses": result.losses, "outputs": sorted(result.outputs),
                "unsharded": all(type(p) is torch.Tensor for p in result.parameters.values())}

    report["full"] = run("full")
    run("part", **{"train.steps": 2})
    report["resumed"] = run("part", resume=os.path.join(out_dir, "part", "checkpoints"))
    report["checkpointing"] = run("ckpt", **{"train.gradient_checkpointing": True})
    os.environ["ACCELERATE_USE_FSDP"] = "false"
    report["data_parallel"] = run("dp")
    os.environ["ACCELERATE_USE_FSDP"] = "true"
    try:
        run("lora", **{"stage2.full_finetune": False})
        report["lora"] = "trained"
    except InputError as exc:
        report["lora"] = str(exc)
    report["steps"] = steps
    report["world"] = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(out_dir, f"fsdp_rank{rank}.json"), "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    if sys.argv[1] == "fsdp":
        fsdp_suite(*sys.argv[2:4])
    else:
        main(*sys.argv[1:3])
