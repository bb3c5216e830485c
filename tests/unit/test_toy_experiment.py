"""The toy experiment's sweep code (benchmarks/toy_experiment/sweep.py and run.py's report):
knob grids and their schedules, LoRA scaling, Pareto fronts, aggregation over seeds, the
headline comparison, the plot and the tables. Not the numbers (those need the full run)."""
import json
import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "toy_experiment"))

import sweep  # noqa: E402


def test_pareto_keeps_only_non_dominated_points():
    pts = [(0.5, 0.9), (0.6, 0.5), (0.7, 0.1), (0.55, 0.4), (0.6, 0.5), (0.4, 0.95), (0.3, 0.2)]
    front = sweep.pareto(pts)
    assert [pts[i] for i in front] == [(0.4, 0.95), (0.5, 0.9), (0.6, 0.5), (0.6, 0.5), (0.7, 0.1)]
    assert 3 not in front and 6 not in front           # (0.55, 0.4) < (0.6, 0.5); (0.3, 0.2) everywhere
    assert sweep.pareto([]) == []
    assert sweep.pareto([(0.1, 0.1)]) == [0]


def test_aggregate_mean_and_spread_over_seeds():
    per_seed = {0: [{"label": "a", "method": "A", "iou": 0.6, "realism": 0.2, "real_share": 0.0},
                    {"label": "b", "method": "A", "iou": 0.4, "realism": 0.8, "real_share": 1.0}],
                1: [{"label": "a", "method": "A", "iou": 0.8, "realism": 0.4, "real_share": 0.5}]}
    rows = sweep.aggregate(per_seed)
    assert [r["label"] for r in rows] == ["a", "b"]
    a, b = rows
    assert a["seeds"] == 2 and a["iou"] == pytest.approx(0.7) and a["iou_std"] == pytest.approx(0.1)
    assert a["realism"] == pytest.approx(0.3) and a["realism_std"] == pytest.approx(0.1)
    assert b["seeds"] == 1 and b["iou_std"] == 0.0
    assert [r["label"] for r in sweep.front(rows)] == ["b", "a"]


def test_compare_reads_realism_at_the_baselines_best_iou():
    a = [{"label": "real", "iou": 0.70, "realism": 0.6}, {"label": "syn", "iou": 0.76, "realism": 0.3},
         {"label": "k1", "iou": 0.745, "realism": 0.5}]
    b = [{"label": "x1", "iou": 0.75, "realism": 0.0}, {"label": "x0.5", "iou": 0.6, "realism": 0.4}]
    h = sweep.compare(a, b, tolerance=0.01)
    assert h["baseline_best_iou"] == 0.75 and h["baseline_best_label"] == "x1"
    assert h["baseline_realism_at_best_iou"] == 0.0
    assert h["realiz3d_realism_at_baseline_best_iou"] == 0.3
    assert h["realiz3d_realism_within_tolerance"] == 0.5
    assert h["realiz3d_best_iou"] == 0.76
    assert sweep.realism_at(a, 0.9) is None


@pytest.mark.parametrize("quick", [False, True])
def test_grids_cover_the_knobs_with_valid_schedules(quick):
    blocks, steps = 6, 8
    a = sweep.realiz3d_grid(blocks, quick)
    b = sweep.baseline_grid(quick)
    for grid in (a, b):
        labels = [k.label for k in grid]
        assert len(set(labels)) == len(labels)
    labels = {k.label for k in a}
    assert {"real", "synthetic"} <= labels
    presets = {k.schedule[0] for k in a}
    assert {"real", "synthetic", "layer-aware", "step-switch", "custom"} <= presets
    if not quick:
        assert {f"layer-aware k={k}" for k in range(1, blocks)} <= labels
        assert len([k for k in a if k.schedule[0] == "step-switch"]) >= 3
    assert all(k.method == "A" for k in a) and all(k.method == "B" and k.schedule is None for k in b)
    assert {0.0, 1.0} <= {k.control_scale for k in b}
    assert "control x1" in {k.label for k in b}
    for k in a:
        s = sweep.schedule_of(k, blocks, steps)
        grid = [s.domains(i, steps, blocks) for i in range(steps)]
        assert all(len(row) == blocks for row in grid)
        if k.label == "real":
            assert all(d == "real" for row in grid for d in row)
        if k.schedule[0] == "custom":      # layer-aware k during the first steps, real after
            assert grid[0][:k.first_k] == ["synthetic"] * k.first_k and grid[0][k.first_k:] == \
                ["real"] * (blocks - k.first_k)
            assert grid[-1] == ["real"] * blocks
    assert all(sweep.schedule_of(k, blocks, steps) is None for k in b)


def test_lora_scale_scales_and_restores_the_adapter():
    from peft import LoraConfig, get_peft_model

    from realiz3d.engine.lora import apply_linear
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model = get_peft_model(net, LoraConfig(r=2, lora_alpha=2, target_modules=["0"], init_lora_weights=False),
                           adapter_name="ctl")
    layer = model.base_model.model[0]
    x = torch.randn(3, 4)
    base, full = layer.base_layer(x), apply_linear(layer, x, ("ctl",))
    with sweep.lora_scale(model, ("ctl",), 0.5):
        half = apply_linear(layer, x, ("ctl",))
    with sweep.lora_scale(model, ("ctl",), 0.0):
        none = apply_linear(layer, x, ("ctl",))
    torch.testing.assert_close(half, base + 0.5 * (full - base))
    torch.testing.assert_close(none, base)
    torch.testing.assert_close(apply_linear(layer, x, ("ctl",)), full)        # restored
    with pytest.raises(RuntimeError):
        with sweep.lora_scale(model, ("ctl",), 2.0):
            raise RuntimeError("boom")
    torch.testing.assert_close(apply_linear(layer, x, ("ctl",)), full)        # restored after an error


def _rows(method, n, rng):
    return [{"label": f"{method}{i}", "method": method, "iou": float(rng.uniform(0.3, 0.8)),
             "realism": float(rng.uniform(0, 1)), "iou_std": 0.01, "realism_std": 0.05, "real_share": 0.5}
            for i in range(n)]


def test_plot_fronts_writes_a_png(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    refs = [{"label": "real", "iou": 0.85, "realism": 1.0}, {"label": "synthetic", "iou": 0.95, "realism": 0.0}]
    path = sweep.plot_fronts(str(tmp_path / "fronts.png"), _rows("A", 8, rng), _rows("B", 6, rng), refs, "t")
    im = Image.open(path)
    assert im.size == (640, 480) and os.path.getsize(path) < 300_000
    a = np.asarray(im.convert("RGB")).reshape(-1, 3)
    assert (a == sweep.COLORS["A"]).all(1).any() and (a == sweep.COLORS["B"]).all(1).any()


def test_write_results_tables(tmp_path, monkeypatch):
    import run
    monkeypatch.setattr(run, "RESULTS", str(tmp_path))
    rng = np.random.default_rng(1)
    a, b = _rows("A", 4, rng), _rows("B", 3, rng)
    result = {"seeds": [0, 1], "variant": "paper", "judges": {"classifier_heldout_accuracy": 1.0,
                                                              "segmenter_heldout_iou_real": 0.9,
                                                              "segmenter_heldout_iou_synthetic": 0.95},
              "wall_s": 60.0, "shared_from_cache": False, "shared_s": 30.0, "headline": sweep.compare(a, b),
              "plot": "benchmarks/results/toy_experiment_fronts.png",
              "references": [{"label": "real", "iou": 0.85, "realism": 1.0, "real_share": 1.0}],
              "diagnostics": [], "fronts": {"A": a, "B": b, "A_front": [r["label"] for r in sweep.front(a)],
                                            "B_front": [r["label"] for r in sweep.front(b)]},
              "ablation": [{"variant": "v", "recipe": {"tau_b": 6}, "train_s": 10.0, "headline": sweep.compare(a, b)}],
              "runs": [{"method": "A", "variant": "paper", "seed": 0, "train_s": 1.0}], "base_train_s": 2.0,
              "sheet": "/tmp/x.png", "sheet_rows": ["control (normal)"]}
    run.write_results(result, quick=True)
    md = (tmp_path / "toy_experiment_quick.md").read_text()
    assert "| A Realiz3D | A0 |" in md and "| B standard fine-tuning | B2 |" in md and "+-" in md
    assert "Recipe variants" in md and "toy_experiment_fronts.png" in md
    assert json.loads((tmp_path / "toy_experiment_quick.json").read_text())["seeds"] == [0, 1]


def test_stage2_trains_both_of_its_loras():
    """The toy's stage 2 and baseline train a control and a target LoRA; adding the second must
    not freeze the first (peft's add_adapter does; training.lora.add_lora keeps the flags)."""
    from realiz3d.loading import tiny_components
    from realiz3d.training.config import LORA_TARGETS
    from realiz3d.training.lora import add_lora
    tr = tiny_components(0).transformer
    first = add_lora(tr, "train_control", 4, 4.0, LORA_TARGETS)
    second = add_lora(tr, "train_target", 4, 4.0, LORA_TARGETS)
    assert all(p.requires_grad for p in first.values()) and all(p.requires_grad for p in second.values())


def test_jobs_run_at_most_n_children_and_report_a_failed_one(tmp_path):
    """run.py --jobs: seeds / variants as child processes of the script, at most N at once, each
    told to write only its sweeps (--seed-only); a failed child stops the run with its log."""
    import argparse

    from jobs import Jobs
    script = tmp_path / "child.py"
    script.write_text("import os, sys, time\nargs = sys.argv[1:]\nseed = args[args.index('--seeds') + 1]\n"
                      "open(os.path.join(args[args.index('--work') + 1], 'ran_' + seed), 'w').write(' '.join(args))\n"
                      "print('child', seed, 'threads', os.environ['OMP_NUM_THREADS'])\ntime.sleep(0.3)\n"
                      "sys.exit(3 if seed == 'bad' else 0)\n")
    args = argparse.Namespace(threads=1, quick=True, reuse=False, jobs=2)
    jobs = Jobs([(f"seed {k}", ["--seeds", str(k)]) for k in range(3)], args, str(tmp_path), script=str(script))
    assert len(jobs.running) == 2 and len(jobs.pending) == 1
    jobs.wait()
    assert sorted(jobs.done) == ["seed 0", "seed 1", "seed 2"] and not jobs.running
    argv = (tmp_path / "ran_2").read_text().split()
    assert "--seed-only" in argv and "--quick" in argv and argv[argv.index("--threads") + 1] == "1"
    assert "threads 1" in (tmp_path / "jobs" / "seed_0.log").read_text()
    failing = Jobs([("seed bad", ["--seeds", "bad"])], args, str(tmp_path), script=str(script))
    with pytest.raises(RuntimeError, match=r"seed bad failed \(exit 3\)[\s\S]*child bad threads 1"):
        failing.wait()


def test_staircase_steps_down_at_each_front_point():
    # front points (iou, realism): the best realism at IoU >= x holds until the next point's IoU
    assert sweep.staircase([(0.6, 0.5), (0.5, 0.9), (0.7, 0.1)]) == [
        (0.5, 0.9), (0.5, 0.5), (0.6, 0.5), (0.6, 0.1), (0.7, 0.1)]
    assert sweep.staircase([(0.4, 1.0)]) == [(0.4, 1.0)] and sweep.staircase([]) == []


def test_leads_names_the_front_above_on_each_iou_interval():
    a = [{"iou": 0.5, "realism": 1.0}, {"iou": 0.6, "realism": 0.6}, {"iou": 0.65, "realism": 0.2}]
    b = [{"iou": 0.55, "realism": 1.0}, {"iou": 0.7, "realism": 0.0}, {"iou": 0.8, "realism": 0.0}]
    got = [(x["lo"], x["hi"], x["leader"], round(x["gap"], 6)) for x in sweep.leads(a, b)]
    # at IoU 0.55 B still has 1.0 and A 0.6; on (0.55, 0.65] only A has realism > 0; above, both are 0
    assert got == [(0.5, 0.55, "B", 0.4), (0.55, 0.65, "A", 0.6), (0.65, 0.8, "tie", 0.0)]
    # a gap under the tie threshold is no lead
    near = [{"iou": 0.5, "realism": 1.0}, {"iou": 0.55, "realism": 0.995}, {"iou": 0.8, "realism": 0.0}]
    b2 = [{"iou": 0.55, "realism": 1.0}, {"iou": 0.8, "realism": 0.0}]
    assert [x["leader"] for x in sweep.leads(near, b2)] == ["tie"]
    assert [x["leader"] for x in sweep.leads(near, b2, tie=0.0)] == ["B", "tie"]


def test_variants_keep_the_step_budget_and_split_it_by_share():
    import run
    full, quick = run.Sizes(), run.Sizes(**run.QUICK)
    za = run.variant_sizes(full, "token-s2x1.2")
    assert (za.stage1_steps, za.stage2_steps, za.shifter_variant) == (100, 900, "token")
    zq = run.variant_sizes(quick, "token-s2x1.2")             # --quick keeps its small budget
    assert zq.stage1_steps + zq.stage2_steps == quick.stage1_steps + quick.stage2_steps == 90
    assert (zq.stage1_steps, zq.stage2_steps) == (9, 81)
    for name in run.VARIANTS:                                  # every variant: A's budget = B's
        z = run.variant_sizes(full, name)
        assert z.stage1_steps + z.stage2_steps == full.baseline_steps, name
    assert run.variant_sizes(full, "paper") == full
