"""Engine benchmark on a mid-size CPU config: RefAny3D's layout at 512 x 512 with 8 views.

Measured side by side in one run (medians of several repeats after a warm-up):
  1. group-masked attention (query groups over gathered keys), block-sparse attention (key
     blocks visited in place with an online softmax) and one dense-mask SDPA over all ~19k
     tokens: time and peak memory (each in a fresh subprocess, peak RSS growth);
  2. per-branch LoRA (rank 16 on RefAny3D's target layers, two adapters) vs the same forward
     without LoRA;
  3. a denoising step that reads the conditions from the KV cache vs a step with no
     conditions at all;
  4. a second request for the same model files (what a second prompt does) vs the first load;
  5. branch batching (issue 10): operator counts per forward from the torch profiler (linear /
     matmul calls and all aten ops) for a plain Flux forward (text + one image) and for RefAny3D
     at 8 views, per-branch (the previous engine) and batched; CPU time of a denoising step
     (the conditioned pass with the group mask + the black-condition pass without) per-branch vs
     batched, interleaved repeats, medians;
  6. the engine's layout attention over RefAny3D's joint sequence: grouped SDPA vs FlexAttention
     (compiled and eager) vs one dense-mask SDPA: time and peak memory (fresh subprocess each).
Everything runs on one thread (torch.set_num_threads(1)): the machine is shared, and one thread
is the least noisy; repeats are interleaved between the variants and medians reported.
Writes benchmarks/results/engine.json.
Usage: .cache/host/venv/bin/python benchmarks/engine.py [--repeats 3] [--sections ops,step,flex,...]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from pack_import import import_pack  # noqa: E402

import_pack()
import torch  # noqa: E402

from realiz3d.engine import (Branch, FluxEngine, KVCache, block_sparse_attention,  # noqa: E402
                            dense_masked_attention, grouped_attention)
from realiz3d.engine.attention import LAYOUT_ATTENTION  # noqa: E402
from realiz3d.refany3d import layout as ra  # noqa: E402
from realiz3d.refany3d.layout import adapters, domain_tags, group_mask  # noqa: E402
from realiz3d.refany3d.lora_targets import LORA_TARGET_MODULES as LORA_TARGETS  # noqa: E402

VIEWS, SIDE, TEXT, HEADS, HEAD_DIM = 8, 32, 512, 4, 64     # 512 px -> 32 x 32 patches; hidden 256


def lengths():
    return [TEXT] + [SIDE * SIDE] * (2 + 2 * VIEWS)


def qkv(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, n, HEADS, HEAD_DIM, generator=g) for n in lengths()] for _ in range(3)]


def attention_child(method: str, repeats: int) -> None:
    """Runs in a subprocess: prints median seconds and peak RSS growth (MiB) of one method."""
    q, k, v = qkv()
    mask = group_mask(VIEWS)
    fn = {"grouped": grouped_attention, "block_sparse": block_sparse_attention, "dense": dense_masked_attention}[method]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn(q, k, v, mask)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(q, k, v, mask)
        times.append(time.perf_counter() - t0)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({"median_s": statistics.median(times), "peak_rss_growth_mib": peak}))


def measure_attention(repeats):
    out = {}
    for method in ("grouped", "block_sparse", "dense"):
        run = subprocess.run([sys.executable, __file__, "--child", method, "--repeats", str(repeats)],
                             capture_output=True, text=True, check=True)
        out[method] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def model():
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(0)
    tr = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4,
                                attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=256,
                                pooled_projection_dim=64, guidance_embeds=True, axes_dims_rope=(16, 24, 24)).eval()
    return tr


def add_loras(tr):
    from peft import LoraConfig
    for name in ("default", "coord"):
        tr.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=LORA_TARGETS), adapter_name=name)
    for n, p in tr.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.01)
    tr.disable_lora()


def branches(with_adapters: bool, conditions: bool = True, t: float = 0.6):
    """RefAny3D's branches from the builder the sampler uses (conditions share one timestep and
    one guidance tensor, as in sampling and training)."""
    g = torch.Generator().manual_seed(1)
    n = SIDE * SIDE
    r, c = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
    ids = torch.stack([torch.zeros(n), r.flatten().float(), c.flatten().float()], 1)
    ts, gd = torch.tensor([t]), torch.tensor([3.5])
    ad = adapters(VIEWS) if with_adapters else [()] * (3 + 2 * VIEWS)
    txt = torch.randn(1, TEXT, 256, generator=g)
    rgb, pts = torch.randn(1, n, 64, generator=g), torch.randn(1, n, 64, generator=g)
    if not conditions:
        return [Branch(txt, torch.zeros(TEXT, 3), ts, gd, is_text=True),
                Branch(rgb, ids, ts, gd, ad[1], domain_tags(VIEWS)[1]),
                Branch(pts, ids, ts, gd, ad[2], domain_tags(VIEWS)[2])]
    cond = torch.randn(1, 2 * VIEWS, n, 64, generator=g)
    return ra.build_branches(txt, torch.zeros(TEXT, 3), ts, gd, rgb, pts, ids, cond, ra.condition_ids(ids, SIDE * 16),
                             torch.ones(1), ad)


def plain_branches():
    """A plain Flux forward: text + one image, no adapter."""
    out = branches(False, conditions=False)
    return [out[0], Branch(out[1].tokens, out[1].ids, out[1].timestep, out[1].guidance)]


LINEAR_OPS = ("aten::linear", "aten::matmul", "aten::mm", "aten::addmm", "aten::bmm")


def op_counts(fn) -> dict:
    """Operator counts of one call of ``fn`` (torch profiler, CPU): linear/matmul calls at the
    top of their stack (a linear counts once, not also as its addmm), aten ops at the top of
    their stack (what a GPU launches roughly one kernel for), and every aten op."""
    fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.events() if e.name.startswith("aten::")]

    def top(e):
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith("aten::"):
                return False
            p = p.cpu_parent
        return True
    tops = [e for e in events if top(e)]
    return {"linear_calls": sum(e.name in LINEAR_OPS for e in tops), "top_level_ops": len(tops),
            "all_aten_ops": len(events)}


def interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, run in turn (a, b, a, b, ...) after one warm-up each."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "runs_s": v} for k, v in times.items()}


def batching(tr, embedder, repeats):
    """Operator counts and step time, per-branch (the previous engine) vs batched."""
    mask, pooled = group_mask(VIEWS), torch.randn(1, 64)
    before = FluxEngine(tr, embedder, batch_branches=False, attention=grouped_attention)
    after = FluxEngine(tr, embedder)

    def step(engine):
        def run():
            engine(branches(True), mask, pooled, outputs=[1, 2])       # conditioned pass, group mask
            engine(branches(True), None, pooled, outputs=[1, 2])       # image-CFG pass, no mask
        return run
    plain = op_counts(lambda: after(plain_branches(), None, pooled))
    plain_before = op_counts(lambda: before(plain_branches(), None, pooled))
    ops = {"plain_flux": plain, "plain_flux_previous_engine": plain_before,
           "refany3d_8_views_before": op_counts(lambda: before(branches(True), mask, pooled, outputs=[1, 2])),
           "refany3d_8_views_after": op_counts(lambda: after(branches(True), mask, pooled, outputs=[1, 2]))}
    for k in ("before", "after"):
        r = ops[f"refany3d_8_views_{k}"]
        r["over_plain"] = {m: r[m] / plain[m] for m in ("linear_calls", "top_level_ops", "all_aten_ops")}
    times = interleaved({"before": step(before), "after": step(after)}, repeats)
    return {"ops_per_forward": ops, "step": times,
            "step_after_over_before": times["after"]["median_s"] / times["before"]["median_s"]}


def flex_child(method: str, repeats: int) -> None:
    """Runs in a subprocess: one layout attention over RefAny3D's joint sequence at 8 views."""
    torch.set_num_threads(1)
    from realiz3d.engine.branch_layout import build_layout, host_mask, layout_key
    q, k, v = qkv()
    bs = branches(True)
    key = layout_key(bs, host_mask(group_mask(VIEWS)), frozenset(), False, True)
    lay = build_layout(key)
    order = [m for s in lay.streams for m in s.members]
    qq, kk, vv = (torch.cat([t[i] for i in order], dim=1) for t in (q, k, v))
    fn = {"per_branch_grouped": None, **LAYOUT_ATTENTION}[method]
    if fn is None:
        call = lambda: grouped_attention(q, k, v, group_mask(VIEWS))  # noqa: E731
    else:
        call = lambda: fn(qq, kk, vv, lay)  # noqa: E731
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss      # growth includes a compile's own memory
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({"median_s": statistics.median(times), "first_call_s": first, "peak_rss_growth_mib": peak}))


def measure_flex(repeats):
    out = {}
    for method in ("per_branch_grouped", "grouped", "flex", "flex_eager", "dense"):
        run = subprocess.run([sys.executable, __file__, "--flex-child", method, "--repeats", str(repeats)],
                             capture_output=True, text=True)
        if run.returncode:
            out[method] = {"error": run.stderr.strip().splitlines()[-1]}
            continue
        out[method] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


def shifter_cost(tr, embedder, mask, pooled, repeats):
    """A step with Realiz3D's shifters on both targets under a layer-aware schedule vs without."""
    from realiz3d.adapters import DomainShifters, ShifterConfig, make_schedule
    shifters = DomainShifters(ShifterConfig.for_transformer(tr, rank=8))
    for p in shifters.parameters():
        torch.nn.init.normal_(p, std=0.02)
    n_blocks = shifters.cfg.num_blocks
    names = make_schedule("layer-aware", k_layers=n_blocks // 2, num_blocks=n_blocks).domains(0, 28, n_blocks)
    domains = [shifters.domain_index(n) for n in names]

    def scheduled():
        out = branches(True)
        for b in out[1:3]:
            b.block_domains = domains
        return out
    plain_engine = FluxEngine(tr, embedder)
    shifted_engine = FluxEngine(tr, embedder, shifters=shifters)
    without = timed(lambda: plain_engine(branches(True), mask, pooled, outputs=[1, 2]), repeats)
    with_ = timed(lambda: shifted_engine(scheduled(), mask, pooled, outputs=[1, 2]), repeats)
    x = [torch.randn(1, SIDE * SIDE, HEADS * HEAD_DIM) for _ in range(2)]
    only = timed(lambda: [[xi + shifted_engine.shift_table[b, d] for xi in x] for b, d in enumerate(domains)],
                 max(repeats, 5))
    return {"without_s": without, "with_s": with_, "forward_s": without, "overhead": with_ / without - 1,
            "shift_only_s": only, "shift_share": only / without}


def second_prompt_reload():
    """Load the tiny model through the node layer's cache twice (two prompts, one held copy)."""
    import tempfile

    from realiz3d.loading import ComponentCache, load_pipeline_folder, write_tiny_set
    with tempfile.TemporaryDirectory() as d:
        folder = write_tiny_set(d).diffusers_folder
        cache = ComponentCache(weak=True)
        t0 = time.perf_counter()
        held = cache.get_or_load("flux", [folder], "fp32", "cpu", lambda: load_pipeline_folder(folder))
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = cache.get_or_load("flux", [folder], "fp32", "cpu", lambda: load_pipeline_folder(folder))
        second = time.perf_counter() - t0
        assert again is held
        return {"first_s": first, "second_s": second, "loads": cache.load_count["flux"]}


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


SECTIONS = ("attention", "batching", "batching_small", "flex", "lora", "kv_cache", "shifters", "reload")
#: the side (latent patches) of the launch-bound comparison: 128 px views and target
SMALL_SIDE = 8


def main():
    global SIDE                      # batching_small runs the same functions at another size
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--child")
    ap.add_argument("--flex-child")
    args = ap.parse_args()
    if args.child:
        return attention_child(args.child, args.repeats)
    if args.flex_child:
        return flex_child(args.flex_child, args.repeats)
    sections = set(args.sections.split(","))
    torch.set_num_threads(1)
    out = os.path.join(ROOT, "benchmarks", "results", "engine.json")
    res = json.load(open(out)) if os.path.exists(out) else {}
    res["config"] = {"views": VIEWS, "target_px": SIDE * 16, "hidden": HEADS * HEAD_DIM, "double_blocks": 2,
                     "single_blocks": 4, "tokens": sum(lengths()), "threads": torch.get_num_threads(),
                     "device": "cpu"}
    if "attention" in sections:
        att = measure_attention(args.repeats)
        res["attention"] = att
        for method in ("grouped", "block_sparse"):
            res["attention"][f"{method}_over_dense_time"] = att[method]["median_s"] / att["dense"]["median_s"]
        print(f"attention over {sum(lengths())} tokens (time, peak RSS growth):")
        for method in ("grouped", "block_sparse", "dense"):
            ratio = att[method]["median_s"] / att["dense"]["median_s"]
            print(f"  {method:12s} {att[method]['median_s']:7.3f} s {att[method]['peak_rss_growth_mib']:7.0f} MiB   "
                  f"{ratio:.2f}x dense")
    if "flex" in sections:
        res["layout_attention"] = r = measure_flex(args.repeats)
        print("layout attention over RefAny3D's joint sequence (median s, first call s, peak RSS growth MiB):")
        for k, v in r.items():
            print(f"  {k:20s} " + (v["error"] if "error" in v else
                                   f"{v['median_s']:7.3f} {v['first_call_s']:7.2f} {v['peak_rss_growth_mib']:7.0f}"))

    tr = model()
    mask, pooled = group_mask(VIEWS), torch.randn(1, 64)
    from realiz3d.refany3d import make_domain_embedder
    embedder = make_domain_embedder(HEADS * HEAD_DIM)
    engine_plain = FluxEngine(tr, embedder)
    plain = timed(lambda: engine_plain(branches(False), mask, pooled, outputs=[1, 2]), args.repeats) \
        if "lora" in sections else None
    add_loras(tr)
    engine = FluxEngine(tr, embedder)
    if "batching" in sections:
        res["batching"] = b = batching(tr, embedder, args.repeats)
        print("operators per forward (linear calls / top-level aten ops / all aten ops):")
        for k, v in b["ops_per_forward"].items():
            extra = "" if "over_plain" not in v else "   x plain: " + " / ".join(f"{x:.2f}" for x in v["over_plain"].values())
            print(f"  {k:30s} {v['linear_calls']:6d} {v['top_level_ops']:7d} {v['all_aten_ops']:7d}{extra}")
        print(f"denoising step (2 forwards): per-branch {b['step']['before']['median_s']:.3f} s, batched "
              f"{b['step']['after']['median_s']:.3f} s -> {b['step_after_over_before']:.2f}x")
    if "batching_small" in sections:
        side, SIDE = SIDE, SMALL_SIDE
        try:
            res["batching_small"] = b = batching(tr, embedder, 3 * args.repeats)
            b["config"] = {"target_px": SMALL_SIDE * 16, "tokens": TEXT + (2 + 2 * VIEWS) * SMALL_SIDE ** 2}
        finally:
            SIDE = side
        print(f"at {SMALL_SIDE * 16} px ({b['config']['tokens']} tokens): step per-branch "
              f"{b['step']['before']['median_s']:.3f} s, batched {b['step']['after']['median_s']:.3f} s -> "
              f"{b['step_after_over_before']:.2f}x")
    if "lora" in sections:
        lora = timed(lambda: engine(branches(True), mask, pooled, outputs=[1, 2]), args.repeats)
        res["lora"] = {"without_s": plain, "with_s": lora, "overhead": lora / plain - 1}
        print(f"forward without LoRA {plain:.3f} s, with per-branch LoRA {lora:.3f} s -> overhead "
              f"{100 * (lora / plain - 1):.1f}%")
    if "kv_cache" in sections:
        ind = group_mask(VIEWS, independent_conditions=True)
        cache = KVCache(range(3, 3 + 2 * VIEWS))
        t0 = time.perf_counter()
        engine(branches(True), ind, pooled, outputs=[1, 2], kv_cache=cache)
        first = time.perf_counter() - t0
        later = timed(lambda: engine(branches(True), ind, pooled, outputs=[1, 2], kv_cache=cache), args.repeats)
        bare = timed(lambda: engine(branches(True, conditions=False), None, pooled, outputs=[1, 2]), args.repeats)
        res["kv_cache"] = {"first_step_s": first, "later_step_s": later, "no_condition_step_s": bare,
                           "later_over_no_condition": later / bare, "cache_bytes": cache.nbytes}
        print(f"KV cache: first step {first:.3f} s, later steps {later:.3f} s, step without conditions {bare:.3f} s "
              f"-> ratio {later / bare:.2f}; cache {cache.nbytes / 2 ** 20:.0f} MiB")
    if "shifters" in sections:
        res["shifters"] = shifter_cost(tr, embedder, mask, pooled, args.repeats)
        r = res["shifters"]
        print(f"domain shifters + layer-aware schedule: {r['with_s']:.3f} s vs {r['without_s']:.3f} s per step -> "
              f"{100 * r['overhead']:+.1f}% (forward {r['forward_s']:.3f} s; shift time alone "
              f"{1e3 * r['shift_only_s']:.2f} ms = {100 * r['shift_share']:.3f}% of a step)")
    if "reload" in sections:
        res["reload"] = second_prompt_reload()
        r = res["reload"]
        print(f"model load: first {r['first_s']:.3f} s, second request {r['second_s'] * 1000:.2f} ms, "
              f"loads {r['loads']} (the second prompt reloads nothing)")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print("written", os.path.relpath(out, ROOT))


if __name__ == "__main__":
    main()
