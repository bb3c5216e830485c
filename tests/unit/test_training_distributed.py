"""Data-parallel training through accelerate: two CPU processes (gloo) on disjoint shards of
the same sample order end with the same weights."""
import json
import os
import socket
import subprocess
import sys

import yaml

from realiz3d.training import DataOrder, build_datasets, load_config
from training_helpers import base_config, one_thread, stage1_shifters, write_real, write_synthetic  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_disjoint_shards_to_equal_weights(tmp_path):
    raw = base_config(tmp_path, "stage2", data={"real": write_real(tmp_path / "real", n=4),
                                                 "synthetic": write_synthetic(tmp_path / "syn", n=4)},
                      train={"steps": 3, "batch_size": 1}, stage2={"shifters": stage1_shifters()})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "ACCELERATE_CONFIG_FILE": str(tmp_path / "none.yaml")}
    # accelerate's CPU launcher needs MPI; --multi_gpu runs torch.distributed.run, and the config's
    # model.device: cpu makes each process's Accelerator take gloo on the CPU
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), os.path.join(HERE, "train_worker.py"), str(path), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2]
    assert reports[0]["digest"] == reports[1]["digest"]                  # identical trained weights
    assert reports[0]["losses"] == reports[1]["losses"] and len(reports[0]["losses"]) == 3
    assert reports[0]["outputs"] and not reports[1]["outputs"]           # only the main process writes
    # each process drew its own slice of the one global order
    cfg = load_config(str(path))
    datasets = build_datasets(cfg)
    order = DataOrder(cfg.train.seed, {k: len(v) for k, v in datasets.items()}, {"real": 0.5, "synthetic": 0.5})
    expected = [[datasets[s].items[i][0] for s, i in order.next(2)] for _ in range(3)]
    assert reports[0]["drawn"] == [step[0] for step in expected]
    assert reports[1]["drawn"] == [step[1] for step in expected]
    assert os.path.isfile(os.path.join(raw["output"]["dir"], "control_lora.safetensors"))


def test_the_scale_out_configs_are_valid_accelerate_configs():
    from accelerate.commands.config.config_args import load_config_from_file

    root = os.path.join(os.path.dirname(os.path.dirname(HERE)), "training", "configs")
    one = load_config_from_file(os.path.join(root, "accelerate_multi_gpu.yaml"))
    many = load_config_from_file(os.path.join(root, "accelerate_multi_node.yaml"))
    assert str(one.distributed_type).endswith("MULTI_GPU") and one.num_machines == 1
    assert str(many.distributed_type).endswith("MULTI_GPU") and many.num_machines == 2
    assert many.num_processes % many.num_machines == 0 and many.main_process_ip
