"""GPU check of the branched engine (issue 10), prepared to run when a GPU is lent (~5 minutes on
one H100/H200): RefAny3D's layout at 8 views x 512 px at FLUX width (hidden 3072, 24 heads of
128, a few blocks, bf16, random weights, rank-16 LoRAs on RefAny3D's targets), measuring

  - seconds per forward (CUDA events, median of interleaved repeats) for the per-branch engine
    (the previous one) and the batched one, with grouped SDPA and with FlexAttention, eager and
    compiled (torch.compile of the blocks);
  - achieved TFLOP/s of the linears (profiler FLOPs of aten::mm/addmm) and its share of the
    card's dense bf16 peak;
  - kernel launches per forward (profiler: CUDA kernels; on the CPU, top-level aten ops);
  - the batched engine against the per-branch one (max abs difference, as a sanity check).

Writes JSON to --out (default: $OUT/gpu_engine.json when $OUT is set, else
benchmarks/results/gpu_engine.json). --tiny runs the same on a tiny model (on the CPU when no GPU):
what the unit test runs.
Usage: python benchmarks/gpu_engine_check.py [--tiny] [--blocks 2,2] [--repeats 5] [--no-compile]
       [--compile-grouped]
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from pack_import import import_pack  # noqa: E402

import_pack()
import torch  # noqa: E402

from realiz3d.engine import FluxEngine, grouped_attention  # noqa: E402
from realiz3d.engine.attention import AUTO_ATTENTION  # noqa: E402
from realiz3d.refany3d import layout as ra  # noqa: E402
from realiz3d.refany3d.domain_embedder import make_domain_embedder  # noqa: E402
from realiz3d.refany3d.lora_targets import LORA_TARGET_MODULES  # noqa: E402

#: dense bf16 tensor-core peak (no sparsity), TFLOP/s, by a substring of the device name
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}


def peak_tflops(name: str):
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def make_model(cfg, device, dtype):
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig
    torch.manual_seed(0)
    with torch.device(device):
        tr = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=cfg["double"],
                                    num_single_layers=cfg["single"], attention_head_dim=cfg["head_dim"],
                                    num_attention_heads=cfg["heads"], joint_attention_dim=cfg["text_dim"],
                                    pooled_projection_dim=768, guidance_embeds=True,
                                    axes_dims_rope=cfg["rope"]).to(dtype).eval()
    for p in tr.parameters():
        torch.nn.init.normal_(p, std=0.02)
    for name in ("default", "coord"):
        tr.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=LORA_TARGET_MODULES), adapter_name=name)
    for n, p in tr.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.01)
    tr.disable_lora()
    hidden = cfg["heads"] * cfg["head_dim"]
    emb = make_domain_embedder(hidden).to(device, dtype)
    return tr, emb


def make_branches(cfg, device, dtype):
    side, views = cfg["side"], cfg["views"]
    n = side * side
    g = torch.Generator().manual_seed(1)
    r, c = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    ids = torch.stack([torch.zeros(n), r.flatten().float(), c.flatten().float()], 1).to(device)
    t, gd = torch.full((1,), 0.6, device=device), torch.full((1,), 3.5, device=device)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)
    return ra.build_branches(rnd(1, cfg["text"], cfg["text_dim"]), torch.zeros(cfg["text"], 3, device=device), t, gd,
                             rnd(1, n, 64), rnd(1, n, 64), ids, rnd(1, 2 * views, n, 64),
                             ra.condition_ids(ids, side * 16), torch.ones(1, device=device), ra.adapters(views))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fns: dict, repeats: int, device) -> dict:
    """Median seconds per call of each function, interleaved, after a warm-up call each."""
    for f in fns.values():
        f()
    sync(device)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def profile(fn, device) -> dict:
    """Linear FLOPs and launches of one call of ``fn``."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    fn()
    sync(device)
    with torch.profiler.profile(activities=acts, with_flops=True) as prof:
        fn()
        sync(device)
    events = prof.events()
    flops = sum(e.flops or 0 for e in events if e.name in ("aten::mm", "aten::addmm", "aten::bmm"))
    if device.type == "cuda":
        launches = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    else:
        launches = sum(1 for e in events if e.name.startswith("aten::") and
                       not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::")))
    return {"linear_flops": flops, "launches": launches}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="a tiny model (runs on the CPU in seconds)")
    ap.add_argument("--blocks", default="2,2", help="double,single blocks")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-grouped", action="store_true", help="also time compiled blocks with grouped SDPA")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    double, single = (int(x) for x in args.blocks.split(","))
    if args.tiny:
        cfg = dict(double=1, single=1, heads=2, head_dim=32, text_dim=64, text=8, side=4, views=8, rope=(8, 12, 12))
    else:
        cfg = dict(double=double, single=single, heads=24, head_dim=128, text_dim=4096, text=512, side=32, views=8,
                   rope=(16, 56, 56))
    res = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype),
           "config": cfg, "torch": torch.__version__, "auto_attention": AUTO_ATTENTION}
    print(res["device"], cfg, flush=True)
    tr, emb = make_model(cfg, device, dtype)
    pooled = torch.randn(1, 768, device=device, dtype=dtype)
    mask = ra.group_mask(cfg["views"]).to(device)
    engines = {"per_branch": FluxEngine(tr, emb, batch_branches=False, attention=grouped_attention),
               "batched_grouped": FluxEngine(tr, emb, attention="grouped"),
               # FlexAttention's fused kernel needs compiling; on the CPU (--tiny) its eager form
               "batched_flex": FluxEngine(tr, emb, attention="flex" if device.type == "cuda" else "flex_eager")}
    if not args.no_compile:         # compiling takes ~30 s per block on a GPU: one engine by default
        engines["batched_flex_compiled"] = FluxEngine(tr, emb, attention="flex", compile=True)
        if args.compile_grouped:
            engines["batched_grouped_compiled"] = FluxEngine(tr, emb, attention="grouped", compile=True)

    branches = make_branches(cfg, device, dtype)           # on the device once: no copies in the timed calls

    def call(engine):
        return lambda: engine(branches, mask, pooled, outputs=[1, 2])
    first = {}
    outs = {}
    for name, e in engines.items():
        sync(device)
        t0 = time.perf_counter()
        outs[name] = call(e)()
        sync(device)
        first[name] = time.perf_counter() - t0
        print(f"first call {name}: {first[name]:.2f} s", flush=True)
    ref = outs["per_branch"]
    res["max_abs_diff_vs_per_branch"] = {k: max(float((o[i].float() - ref[i].float()).abs().max()) for i in ref)
                                         for k, o in outs.items()}
    res["first_call_s"] = first
    res["seconds_per_forward"] = sec = timed({k: call(e) for k, e in engines.items()}, args.repeats, device)
    res["profile"] = prof = {k: profile(call(e), device) for k, e in engines.items()}
    peak = peak_tflops(res["device"])
    res["linear_tflops"] = {k: prof[k]["linear_flops"] / sec[k] / 1e12 for k in engines}
    res["linear_share_of_bf16_peak"] = None if peak is None else {k: v / peak for k, v in res["linear_tflops"].items()}
    res["bf16_peak_tflops"] = peak
    res["speedup_over_per_branch"] = {k: sec["per_branch"] / v for k, v in sec.items()}
    for k in engines:
        share = "" if peak is None else f" ({100 * res['linear_share_of_bf16_peak'][k]:.0f}% of peak)"
        print(f"{k:26s} {sec[k] * 1e3:9.2f} ms/forward  {prof[k]['launches']:6d} launches  "
              f"linears {res['linear_tflops'][k]:7.2f} TFLOP/s{share}  x{res['speedup_over_per_branch'][k]:.2f}",
              flush=True)
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_engine.json") if os.environ.get("OUT")
                       else os.path.join(ROOT, "benchmarks", "results", "gpu_engine.json"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print("written", out)
    return res


if __name__ == "__main__":
    main()
