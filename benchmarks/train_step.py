"""Training-step benchmark on a mid-size CPU config (hidden 256, 4 double + 8 single blocks,
256 x 256 images: 256 image tokens per branch, one aligned control branch, 64 text tokens).

Measured side by side in one run (steps interleaved, medians of several repeats after a
warm-up; a step = forward + backward + AdamW update, latents and text already cached):
  a. the standard LoRA fine-tuning step (stage-2 baseline: no shifters) vs the stage-2 step with
     frozen shifters: a synthetic sample (controls, S in every block) and a real sample with
     i = 0 (same work, R everywhere), then a real sample with i ~ U{0..tau_B} (reassignment and
     layer-aware freezing, tau_B = half the blocks) against the baseline's real step;
  b. a real-sample step with the first i blocks frozen (no backward through them) vs the same
     step with i = 0, for i = a quarter, half and three quarters of the blocks.
Writes benchmarks/results/train_step.json.
Usage: .cache/host/venv/bin/python benchmarks/train_step.py [--repeats 7] [--threads N]
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from pack_import import import_pack  # noqa: E402

import_pack()
import torch  # noqa: E402

from realiz3d.adapters import DomainShifters, ShifterConfig, save_shifters  # noqa: E402
from realiz3d.loading import configs, tiny_components  # noqa: E402
from realiz3d.training import Plan, Sample, load_config, make_recipe  # noqa: E402

SIZE, DOUBLE, SINGLE, HEADS, HEAD_DIM, TEXT = 256, 4, 8, 4, 64, 64
BLOCKS = DOUBLE + SINGLE


def pipeline():
    from diffusers import FluxTransformer2DModel

    comps = tiny_components(0)
    torch.manual_seed(0)
    comps.transformer = FluxTransformer2DModel.from_config({
        **configs.load("flux1-dev_transformer"), "num_layers": DOUBLE, "num_single_layers": SINGLE,
        "attention_head_dim": HEAD_DIM, "num_attention_heads": HEADS, "in_channels": 64, "joint_attention_dim": 64,
        "pooled_projection_dim": 32, "guidance_embeds": True, "axes_dims_rope": [16, 24, 24]})
    return comps.pipeline()


def samples():
    g = torch.Generator().manual_seed(0)
    real = Sample(key="real", domain="real", image=torch.rand(SIZE, SIZE, 3, generator=g), caption="a photo")
    syn = Sample(key="syn", domain="synthetic", image=torch.rand(SIZE, SIZE, 3, generator=g), caption="a render",
                 controls=torch.rand(1, SIZE, SIZE, 3, generator=g))
    return real, syn


class Stepper:
    """One recipe with its optimizer; ``step(sample, plan)`` returns seconds."""

    def __init__(self, pipe, cfg):
        torch.manual_seed(0)
        self.recipe = make_recipe(cfg, pipe, "cpu", lambda m: None)
        self.params = list(self.recipe.trainables().values())
        self.opt = torch.optim.AdamW(self.params, lr=1e-4)

    def step(self, sample, plan) -> float:
        t0 = time.perf_counter()
        loss = self.recipe.run_group([sample], [plan], [torch.Generator().manual_seed(1)])
        loss.sum().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0


def measure(cases: dict, repeats: int) -> tuple[dict, dict]:
    """({name: median seconds}, {name: fastest seconds}), the cases interleaved so that load
    changes hit all alike (the fastest repeat is the least disturbed by other processes)."""
    for fn in cases.values():          # warm-up (and fills the latent / text caches)
        fn(), fn()
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(fn())
    return ({name: statistics.median(v) for name, v in times.items()}, {name: min(v) for name, v in times.items()})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = pipeline()
    tmp = tempfile.mkdtemp(prefix="r3d-train-bench-")
    shifter_path = os.path.join(tmp, "shifters.safetensors")
    shifters = DomainShifters(ShifterConfig.for_transformer(pipe.transformer, rank=8, embed_dim=64))
    for p in shifters.parameters():
        torch.nn.init.normal_(p, std=0.02)
    save_shifters(shifters, shifter_path)
    tau_b = BLOCKS // 2
    base = {"recipe": "stage2", "data": {"controls": ["normal"], "size": SIZE},
            "train": {"max_sequence_length": TEXT, "latents": "mean"}, "lora": {"rank": 16, "alpha": 16},
            "output": {"dir": tmp}}
    # one pipeline each (same seed, same weights): the two recipes' adapters share names
    baseline = Stepper(pipeline(), load_config({**base, "stage2": {"baseline": True}}))
    stage2 = Stepper(pipe, load_config({**base, "stage2": {"shifters": shifter_path, "tau_b": tau_b}}))
    real, syn = samples()
    S, R = stage2.recipe.S, stage2.recipe.R

    def reassigned(i):
        return Plan(frozen=i, domains=(S,) * i + (R,) * (BLOCKS - i))

    draws = iter(range(10 ** 6))       # i ~ U{0..tau_B}, cycled so every repeat sees the whole range
    cases = {
        "baseline_synthetic": lambda: baseline.step(syn, Plan(controls=True)),
        "stage2_synthetic": lambda: stage2.step(syn, Plan(domains=(S,) * BLOCKS, controls=True)),
        "baseline_real": lambda: baseline.step(real, Plan()),
        "stage2_real_i0": lambda: stage2.step(real, reassigned(0)),
        "stage2_real_drawn_i": lambda: stage2.step(real, reassigned(next(draws) % (tau_b + 1))),
    }
    frozen = {f"stage2_real_i{i}": (lambda i=i: stage2.step(real, reassigned(i))) for i in (3, 6, 9)}
    t, fastest = measure({**cases, **frozen}, args.repeats)

    def ratios(t):
        return ({"synthetic_sample": t["stage2_synthetic"] / t["baseline_synthetic"],
                 "real_sample_i0": t["stage2_real_i0"] / t["baseline_real"],
                 "real_sample_drawn_i": t["stage2_real_drawn_i"] / t["baseline_real"]},
                {f"i={i}": t[f"stage2_real_i{i}"] / t["stage2_real_i0"] for i in (3, 6, 9)})

    (a, b), (a_min, b_min) = ratios(t), ratios(fastest)
    result = {
        "config": {"image_px": SIZE, "tokens_per_image_branch": (SIZE // 16) ** 2, "text_tokens": TEXT,
                   "hidden": HEADS * HEAD_DIM, "double_blocks": DOUBLE, "single_blocks": SINGLE, "lora_rank": 16,
                   "tau_b": tau_b, "threads": torch.get_num_threads(), "repeats": args.repeats,
                   "load_average_1min_after": os.getloadavg()[0], "cpus": os.cpu_count()},
        "median_s": t, "fastest_s": fastest,
        "a_stage2_over_baseline": {**a, "target": "<= 1.05"}, "a_stage2_over_baseline_fastest": a_min,
        "b_frozen_over_i0": b, "b_frozen_over_i0_fastest": b_min,
    }
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "train_step.json"), "w") as f:
        json.dump(result, f, indent=1)
    print("median step (s): " + ", ".join(f"{k} {v:.3f}" for k, v in t.items()))
    for label, a, b in (("median", a, b), ("fastest", a_min, b_min)):
        print(f"(a, {label}) stage 2 / baseline: synthetic {a['synthetic_sample']:.3f}, real i=0 "
              f"{a['real_sample_i0']:.3f}, real i~U{{0..{tau_b}}} {a['real_sample_drawn_i']:.3f} (target <= 1.05)")
        print(f"(b, {label}) frozen first i blocks / i=0: " + ", ".join(f"{k} {v:.3f} (saves {1 - v:.0%})"
                                                                      for k, v in b.items()))


if __name__ == "__main__":
    main()
