"""The prepared GPU check (benchmarks/gpu_engine_check.py) runs end to end with --tiny on the CPU."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gpu_engine_check_runs_tiny(tmp_path):
    out = tmp_path / "gpu_engine.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_engine_check.py"), "--tiny",
                          "--no-compile", "--repeats", "1", "--out", str(out)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["seconds_per_forward"]) == {"per_branch", "batched_grouped", "batched_flex"}
    assert all(d <= 1e-4 for d in res["max_abs_diff_vs_per_branch"].values())
    assert res["profile"]["batched_grouped"]["launches"] < res["profile"]["per_branch"]["launches"]
