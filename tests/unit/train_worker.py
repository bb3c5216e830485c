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


if __name__ == "__main__":
    main(*sys.argv[1:3])
