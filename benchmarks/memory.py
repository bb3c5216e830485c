"""Device memory a FLUX.1-dev denoising step needs under the branched engine, against the goals
(<= 16 GiB with fp8 weights fully loaded, <= 12 GiB with ComfyUI's partial loading).

Three parts:
  1. Weights, from the parameter count of the real architecture (diffusers'
     FluxTransformer2DModel built from loading/configs/flux1-dev_transformer.json on the meta
     device, so nothing is allocated). fp8 assumption: the blocks' Linear weights take 1 byte per
     parameter; biases, norm scales, the input embedders (x_embedder, context_embedder,
     time_text_embed) and the final layer (norm_out, proj_out) stay bf16. The JSON also holds
     the "every parameter fp8" figure (a file cast wholesale), which is ~60 MB smaller. Also the
     largest double and single block: what partial loading must hold on the device at least.
  2. Activations of ONE double and ONE single block at full width (3072 = 24 x 128), bf16, run
     on the CPU through the pack's FluxEngine with the real token counts:
       refany3d: text 512 + target RGB and point map + 8 RGB and 8 point-map views, 512 px
                 (1024 tokens each) = 18944 tokens, RefAny3D's group mask, its two rank-16 LoRA
                 adapters ("default", "coord") per branch as layout.adapters says, domain embedder;
       control:  Realiz3D at 1024 px: text 512 + target 4096 + one control branch 4096 = 8704
                 tokens, full attention, one rank-16 control LoRA on the control branch;
       ominicontrol: OminiControl's spatial LoRAs at their 512 px, depth + canny at once: text 512
                 + target 1024 + two conditions 1024 = 3584 tokens, OminiControl's mask
                 (conditions apart), a rank-4 LoRA on each condition (--case ominicontrol).
     Each (case, block) runs in a fresh subprocess on a transformer with just that block (1
     double + 0 single, or 0 + 1) and random weights, so the whole-forward peak RSS growth
     (resource.getrusage) is a per-block cross-check. The main figure comes from torch.profiler
     (profile_memory=True): the raw allocation/free records (each counted once, no parent
     events) summed in time order give live CPU memory above what existed before the forward
     (weights, inputs). The engine's block and attention calls are wrapped in record_function
     ranges, which separate the state entering a block (every branch's hidden states, RoPE
     tables, time embeddings) from the block's own transient peak.
     CPU versus GPU attention: this torch runs bf16 SDPA without a mask through its CPU flash
     kernel (reported per run), which, like the GPU flash / memory-efficient kernels, never holds
     the [Nq, Nk] scores. The "GPU est." figure replaces the measured attention window by the
     analytic GPU one (grouped_attention's gathered q/k/v, outputs and the fp32 log-sum-exp);
     "math scores" is what a kernel materialising scores would add ([H, Nq, Nk] twice, for the
     largest query group). Measured = CPU; GPU est. and math scores = analytic.
  3. Per-step device peak = weights + LoRA weights + inputs + state + largest block transient
     (+ one layer upcast to bf16 for fp8 weights, as ComfyUI casts per layer). Partial loading
     replaces the weights by 2 x the largest block (one computing, one streaming in) plus the
     non-block layers. Text encoders and VAE are assumed offloaded while denoising; the CUDA
     context and ComfyUI's reserve are not counted.
Writes benchmarks/results/memory.json (--quick: memory_quick.json). Threads: torch.set_num_threads(2) (both cores of the dev
host). Run time there (2-core AMD EPYC, AVX2 only, torch 2.13 CPU): ~25 minutes for the full
bf16 run (forwards of 528 / 489 / 182 / 252 s), ~30 with --fp32, ~1 for --quick. Nearly all of
it is bf16 matmul, which a CPU without AVX512-BF16 / AMX emulates at ~20 GFLOP/s (fp32: ~175).
Result of that run (bf16, GPU est.): full load with fp8 weights 12.7 GiB (RefAny3D 8 x 512 px),
12.1 GiB (control 1024 px); partial loading 2.3 and 1.7 GiB; the activation peak (state + one
block + inputs) is 1.3 and 0.8 GiB (CPU measured), 12% and 7% of the fp8 weights. Not included:
the optional condition KV cache (K and V of the 16 condition branches in all 57 blocks: 10.7 GiB
per cache in bf16, two with image CFG), a batch above 1.

Training (--training): what a training step of each recipe needs at FLUX size. Parameters,
gradients and optimizer state (AdamW, fp32) from the real architecture on the meta device (the
LoRAs on RefAny3D's target modules, rank 16, two adapters; stage 1's shifters, rank 8, embed 64);
the activation peak of ONE double and ONE single block at full width (3072), forward + backward
of a loss on the target, the LoRAs trained, measured on the CPU in a fresh subprocess each, with
and without gradient checkpointing: torch.profiler's live CPU memory (each allocation and free
once, in time order) above what existed before the forward, and the bytes autograd saved for
backward (torch.autograd.graph.saved_tensors_hooks; parameters not counted). fp32 on the CPU
(bf16 matmul is emulated here at ~20 GFLOP/s); the bytes are reported per token and hidden unit
in units of the dtype's size, so a bf16 step keeps half the bytes. Cases: stage 1 and stage 2 (one
control) at 512 px; RefAny3D's layout with 2 views of 512 px, single block only (8 views, or its
double block, need more RAM than this 23 GiB host leaves; training.memory scales it). Run time on
the 2-core host: ~6 minutes. The device total per recipe is
training.memory.training_memory (the pure estimate the trainer checks before the first step)
next to the same sum from the measured units, against 24 GiB.
Usage: .cache/host/venv/bin/python benchmarks/memory.py [--quick] [--fp32] [--report] [--training] [--case CASE]
  --quick: 2 views, 128 px, 64 text tokens (smoke test); --fp32: also measure fp32 activations;
  --report: print the tables again from benchmarks/results/memory.json without measuring.
"""
import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from pack_import import import_pack  # noqa: E402

import_pack()
import torch  # noqa: E402
from torch import nn  # noqa: E402

from realiz3d.engine.attention import query_groups  # noqa: E402
from realiz3d.refany3d import layout  # noqa: E402
# RefAny3D's LoRA targets (refany3d/lora_targets.py); the control LoRA is assumed to use the same
from realiz3d.refany3d.lora_targets import LORA_TARGET_MODULES as LORA_TARGETS, is_target  # noqa: E402

GiB = 1024 ** 3
CONFIG = os.path.join(ROOT, "loading", "configs", "flux1-dev_transformer.json")
LORA_RANK = 16
BLOCKS = ("transformer_blocks.", "single_transformer_blocks.")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
CASES = ("refany3d", "control", "ominicontrol")
CASE_HEADS = {"refany3d": "refany3d 8x512", "control": "control 1024", "ominicontrol": "omini 2x512"}
CASE_HEADS_QUICK = {"refany3d": "refany3d 2x128", "control": "control 128", "ominicontrol": "omini 2x128"}


def flux_config(**override) -> dict:
    with open(CONFIG) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    return {**cfg, **override}


def build_meta(**override):
    from diffusers import FluxTransformer2DModel
    with torch.device("meta"):
        return FluxTransformer2DModel(**flux_config(**override))


# ---------------------------------------------------------------- 1. weights

def weight_bytes() -> dict:
    """Bytes of FLUX.1-dev's transformer under bf16 and the fp8 assumption of the docstring."""
    model = build_meta()
    per_block, total = {}, {"params": 0, "bf16": 0, "fp8": 0, "fp8_everything": 0, "non_block_bf16": 0}
    largest_linear, lora = 0, 0
    for mname, mod in model.named_modules():
        block = ".".join(mname.split(".")[:2]) if mname.startswith(BLOCKS) else None
        for pname, p in mod.named_parameters(recurse=False):
            n = p.numel()
            fp8 = n * (1 if block and isinstance(mod, nn.Linear) and pname == "weight" else 2)
            total["params"] += n
            total["bf16"] += 2 * n
            total["fp8"] += fp8
            total["fp8_everything"] += n
            if block:
                b = per_block.setdefault(block, {"bf16": 0, "fp8": 0})
                b["bf16"] += 2 * n
                b["fp8"] += fp8
            else:
                total["non_block_bf16"] += 2 * n
        if isinstance(mod, nn.Linear):
            if block:
                largest_linear = max(largest_linear, 2 * mod.weight.numel())
            if is_target(mname, LORA_TARGETS):            # peft's matching rule (full match of the regex)
                lora += LORA_RANK * (mod.in_features + mod.out_features)
    for kind, prefix in (("double", BLOCKS[0]), ("single", BLOCKS[1])):
        blocks = [v for k, v in per_block.items() if k.startswith(prefix)]
        total[f"{kind}_block_bf16"] = max(b["bf16"] for b in blocks)
        total[f"{kind}_block_fp8"] = max(b["fp8"] for b in blocks)
    total["largest_linear_bf16"] = largest_linear
    total["lora_adapter_bf16"] = 2 * lora             # one rank-16 adapter on every target, bf16 like its base
    return total


# ---------------------------------------------------------------- 2. activations (child processes)

def case_spec(case: str, quick: bool) -> dict:
    """Branch token counts, group mask [n, n] (or None), per-branch adapters and domain tags."""
    text = 64 if quick else 512
    if case == "refany3d":
        views, side = (2, 8) if quick else (8, 32)
        n = layout.num_branches(views)
        return {"text": text, "side": side, "lengths": [text] + [side * side] * (n - 1),
                "mask": layout.group_mask(views), "adapters": layout.adapters(views),
                "domains": layout.domain_tags(views), "conditions_from": 3, "loras": ["default", "coord"]}
    if case == "ominicontrol":        # OminiControl at its 512 px: depth + canny, conditions apart, rank 4
        from realiz3d.sampling.realiz3d_layout import control_mask
        side = 8 if quick else 32
        return {"text": text, "side": side, "lengths": [text] + [side * side] * 3,
                "mask": control_mask([1, 1], [True, True]), "adapters": [(), (), ("depth",), ("canny",)],
                "domains": [None] * 4, "conditions_from": 2, "loras": ["depth", "canny"], "rank": 4}
    side = 8 if quick else 64
    return {"text": text, "side": side, "lengths": [text, side * side, side * side], "mask": None,
            "adapters": [(), (), ("control",)], "domains": [None] * 3, "conditions_from": 2, "loras": ["control"]}


def gpu_attention(lengths, mask, width: int, heads: int, nbytes: int) -> dict:
    """Analytic attention transient of grouped_attention with a flash kernel (no [Nq, Nk] scores):
    every group's output [Nq, C] stays alive until the block's projections; the gathered q [Nq, C]
    (a copy only for several query branches), k and v [Nk, C] (copies for several key branches)
    and the fp32 log-sum-exp [H, Nq] live one group at a time. Also the scores a math kernel
    would hold for the largest group: [H, Nq, Nk] for the logits and again for the softmax."""
    mask = torch.ones(len(lengths), len(lengths), dtype=torch.bool) if mask is None else mask
    outputs, gather, scores = 0, 0, 0
    for members, keys in query_groups(mask):
        nq, nk = sum(lengths[i] for i in members), sum(lengths[j] for j in keys)
        outputs += nq * width * nbytes
        copied = (nq if len(members) > 1 else 0) + 2 * (nk if len(keys) > 1 else 0)
        gather = max(gather, copied * width * nbytes + heads * nq * 4)
        scores = max(scores, 2 * heads * nq * nk * nbytes)
    return {"flash": outputs + gather, "math_scores": scores}


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def marked(fn, label: str):
    """fn inside a profiler range, so the memory timeline can be cut per block and attention."""
    from torch.profiler import record_function

    def wrapped(*args, **kwargs):
        with record_function(label):
            return fn(*args, **kwargs)
    return wrapped


def timeline(prof, labels):
    """(times [n], live bytes after each allocation record [n], {label: [(start, end)]})."""
    events = prof.profiler.kineto_results.events()
    mem = sorted((e.start_ns(), e.nbytes()) for e in events
                 if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    times = torch.tensor([t for t, _ in mem], dtype=torch.int64)      # ns since the epoch: too fine for float64
    live = torch.tensor([b for _, b in mem], dtype=torch.int64).cumsum(0)
    ranges = {lb: [(e.start_ns(), e.end_ns()) for e in events if e.name() == lb] for lb in labels}
    return times, live, ranges


def window(times, live, start, end):
    """(live bytes when the window opens, peak live bytes inside it)."""
    before = live[times < start]
    inside = live[(times >= start) & (times <= end)]
    level = float(before[-1]) if len(before) else 0.0
    return level, max(level, float(inside.max()) if len(inside) else level)


def child(case: str, kind: str, dtype_name: str, quick: bool) -> dict:
    """One forward of a one-block transformer; prints the measured figures as JSON."""
    from diffusers import FluxPipeline
    from peft import LoraConfig
    from torch.profiler import ProfilerActivity, profile

    from realiz3d.engine import Branch, FluxEngine
    from realiz3d.refany3d import make_domain_embedder

    torch.set_num_threads(2)
    dtype, spec = DTYPES[dtype_name], case_spec(case, quick)
    model = build_meta(num_layers=int(kind == "double"), num_single_layers=int(kind == "single")).to(dtype)
    model.to_empty(device="cpu")                        # allocated once in its dtype: no fp32 copy inflates RSS
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    for name in spec["loras"]:
        rank = spec.get("rank", LORA_RANK)
        model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS), adapter_name=name)
    model.disable_lora()
    width = model.config.num_attention_heads * model.config.attention_head_dim
    embedder = make_domain_embedder(width).to(dtype) if case == "refany3d" else None
    engine = FluxEngine(model, embedder)
    engine._double_block = marked(engine._double_block, "block")
    engine._single_block = marked(engine._single_block, "block")
    # the attention the forward really runs: the layout attention the engine picks by name
    # (engine.attention.LAYOUT_ATTENTION; 'grouped' on the CPU), wrapped where the engine looks it up
    from realiz3d.engine import flux_engine
    for name, fn in list(flux_engine.LAYOUT_ATTENTION.items()):
        flux_engine.LAYOUT_ATTENTION[name] = marked(fn, "attention")

    g = torch.Generator().manual_seed(0)
    side, lengths = spec["side"], spec["lengths"]
    img_ids = FluxPipeline._prepare_latent_image_ids(1, side, side, "cpu", torch.float32)   # [side^2, 3]
    t, gd, t0, g1 = torch.tensor([0.6]), torch.tensor([3.5]), torch.zeros(1), torch.ones(1)
    branches = [Branch(torch.randn(1, spec["text"], model.config.joint_attention_dim, generator=g).to(dtype),
                       torch.zeros(spec["text"], 3), t, gd, is_text=True, name="text")]
    for i in range(1, len(lengths)):
        cond = i >= spec["conditions_from"]              # conditions run at t = 0 (SPEC.md)
        branches.append(Branch(torch.randn(1, lengths[i], model.config.in_channels, generator=g).to(dtype), img_ids,
                               t0 if cond else t, g1 if cond else gd, spec["adapters"][i], spec["domains"][i],
                               name=f"branch{i}"))
    pooled = torch.randn(1, model.config.pooled_projection_dim, generator=g).to(dtype)
    inputs = sum(x.numel() * x.element_size() for x in [pooled] + [y for b in branches for y in (b.tokens, b.ids)])

    gc.collect()
    rss_before, maxrss_before = rss_now(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        engine.forward(branches, spec["mask"], pooled, outputs=[1])
    seconds = time.perf_counter() - start
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    times, live, ranges = timeline(prof, ["block", "attention"])
    if len(ranges["block"]) != 1 or len(ranges["attention"]) != 1:
        raise RuntimeError(f"expected one block and one attention range, got {ranges}: has FluxEngine's "
                           "_double_block/_single_block/attention interface changed?")
    (b0, b1), (a0, a1) = ranges["block"][0], ranges["attention"][0]
    state, block_peak = window(times, live, b0, b1)
    attn_level, attn_peak = window(times, live, a0, a1)
    outside = live[(times >= b0) & (times <= b1) & ((times < a0) | (times > a1))]
    outside_peak = max(state, float(outside.max()) if len(outside) else state)
    nbytes = torch.tensor([], dtype=dtype).element_size()
    analytic = gpu_attention(lengths, spec["mask"], width, model.config.num_attention_heads, nbytes)
    names = {e.name() for e in prof.profiler.kineto_results.events()}
    return {"case": case + (f":{views}" if case == "refany3d" else ""), "block": kind, "dtype": dtype_name, "tokens": sum(lengths), "seconds": seconds,
            "inputs": inputs, "state": state, "block_peak": block_peak,
            "state_hidden_analytic": sum(lengths) * width * nbytes,      # [T, C] over all branches
            "state_rope_analytic": sum(lengths) * model.config.attention_head_dim * 2 * 4,   # cos, sin [T, Dh] fp32
            "block_transient_cpu": block_peak - state,
            "block_transient_gpu_est": max(outside_peak, attn_level + analytic["flash"]) - state,
            "attention_transient_cpu": attn_peak - attn_level,
            "attention_transient_gpu_flash": analytic["flash"], "math_scores": analytic["math_scores"],
            "sdpa_kernels": sorted(n for n in names if "scaled_dot_product" in n),
            "forward_peak_profiler": float(live.max()), "rss_growth": maxrss_after - rss_before,
            "rss_valid": maxrss_after > maxrss_before}


def run_child(case, kind, dtype_name, quick) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", case, kind, dtype_name] + ["--quick"] * quick
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"child {case}/{kind}/{dtype_name} failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- 3. sums and report

def device_peaks(w: dict, runs: list, case: str, dtype_name: str, est: str) -> dict:
    """Per-step device bytes for one case from the larger block transient (est: cpu or gpu_est)."""
    rs = [r for r in runs if r["case"] == case and r["dtype"] == dtype_name]
    act = max(r["state"] for r in rs) + max(r[f"block_transient_{est}"] for r in rs) + rs[0]["inputs"]
    spec = case_spec(case, True)
    lora = w["lora_adapter_bf16"] * len(spec["loras"]) * spec.get("rank", LORA_RANK) / LORA_RANK
    block_fp8 = max(w["double_block_fp8"], w["single_block_fp8"])
    block_bf16 = max(w["double_block_bf16"], w["single_block_bf16"])
    return {"full_fp8": w["fp8"] + w["largest_linear_bf16"] + lora + act, "full_bf16": w["bf16"] + lora + act,
            "partial_fp8": 2 * block_fp8 + w["non_block_bf16"] + w["largest_linear_bf16"] + lora + act,
            "partial_bf16": 2 * block_bf16 + w["non_block_bf16"] + lora + act, "activations": act}


def report(w: dict, runs: list, dtype_names, quick: bool) -> dict:
    """Prints the tables (GiB); returns the device peaks {bf16_cpu|bf16_gpu_est: {case: {...}}}."""
    cases = [c for c in CASES if any(r["case"] == c for r in runs)]
    head = [(CASE_HEADS_QUICK if quick else CASE_HEADS)[c] for c in cases]

    def row(label, *vals, width=10):
        print(f"  {label:46s}" + "".join(f"{v / GiB:{width}.3f}" for v in vals))
    print(f"\nweights, FLUX.1-dev ({w['params'] / 1e9:.3f} B params), GiB{'fp8*':>17s}{'bf16':>10s}")
    for label, key in (("full transformer", ""), ("largest double block", "double_block_"),
                       ("largest single block", "single_block_")):
        row(label, w[key + "fp8"], w[key + "bf16"])
    row("non-block layers (embedders, final layer)", w["non_block_bf16"], w["non_block_bf16"])
    row("one rank-16 LoRA adapter, all targets", w["lora_adapter_bf16"], w["lora_adapter_bf16"])
    row("largest Linear upcast to bf16 (fp8 compute)", w["largest_linear_bf16"], 0)
    print(f"  * block Linear weights 1 byte/param; biases, norms, embedders, final layer bf16 "
          f"(every parameter fp8: {w['fp8_everything'] / GiB:.3f})")
    for dn in dtype_names:
        by = {(r["case"], r["block"]): r for r in runs if r["dtype"] == dn}
        print(f"\nactivations {dn}, GiB (CPU: measured; GPU: analytic)" + "".join(f"{h:>15s}" for h in head))
        print(f"  {'tokens':46s}" + "".join(f"{by[c, 'double']['tokens']:15d}" for c in cases))
        row("state entering a block (hidden, RoPE, temb)", *(by[c, "double"]["state"] for c in cases), width=15)
        row("  of which hidden [T, 3072] (analytic)", *(by[c, "double"]["state_hidden_analytic"] for c in cases),
            width=15)
        row("  of which RoPE cos, sin [T, 128] fp32", *(by[c, "double"]["state_rope_analytic"] for c in cases),
            width=15)
        row("inputs (tokens, ids, pooled)", *(by[c, "double"]["inputs"] for c in cases), width=15)
        for kind in ("double", "single"):
            for label, key in (("block transient, CPU measured", "block_transient_cpu"),
                               ("block transient, GPU est.", "block_transient_gpu_est"),
                               ("  attention transient, CPU measured", "attention_transient_cpu"),
                               ("  attention transient, GPU flash", "attention_transient_gpu_flash"),
                               ("  scores a math kernel would add", "math_scores"),
                               ("forward peak above weights, profiler", "forward_peak_profiler"),
                               ("forward peak RSS growth (cross-check)", "rss_growth")):
                row(f"{kind}: {label}", *(by[c, kind][key] for c in cases), width=15)
        units = [max(by[c, k]["state"] + by[c, k]["block_transient_cpu"] + by[c, k]["inputs"]
                     for k in ("double", "single")) / by[c, "double"]["state_hidden_analytic"] for c in cases]
        print(f"  {'peak (state + block + inputs) / [T, 3072] bytes':46s}" + "".join(f"{u:15.2f}" for u in units))
        secs = ", ".join(f"{c} " + " / ".join(f"{by[c, k]['seconds']:.0f}" for k in ("double", "single"))
                         for c in cases)
        print(f"  forward seconds (double / single): {secs}")
        print(f"  SDPA ops run: {sorted({n for r in by.values() for n in r['sdpa_kernels']})}")
        if not all(r["rss_valid"] for r in by.values()):
            print("  (an RSS figure did not exceed the process's earlier peak: that one is a lower bound)")
    summary = {f"bf16_{est}": {c: device_peaks(w, runs, c, "bf16", est) for c in cases} for est in ("cpu", "gpu_est")}
    print(f"\ndevice peak per step, bf16 activations, GiB" + "".join(f"{c:>20s}" for c in cases) + "   goal")
    print(f"  {'':46s}" + f"{'CPU':>10s}{'GPU est':>10s}" * len(cases))
    for key, label, goal in (("full_fp8", "full load, fp8 weights", 16), ("full_bf16", "full load, bf16 weights", None),
                             ("partial_fp8", "partial load, fp8, 2 blocks on device", 12),
                             ("partial_bf16", "partial load, bf16, 2 blocks on device", 12)):
        vals = [summary[f"bf16_{est}"][c][key] for c in cases for est in ("cpu", "gpu_est")]
        verdict = "" if goal is None else f"   <= {goal}: " + ("ok" if max(vals) <= goal * GiB else "OVER")
        print(f"  {label:46s}" + "".join(f"{v / GiB:10.3f}" for v in vals) + verdict)
    for c in cases:
        a = summary["bf16_cpu"][c]["activations"]
        block = 2 * max(w["double_block_fp8"], w["single_block_fp8"])
        print(f"  {c}: (state + transient + inputs) / weights = {a / w['fp8']:.3f} fp8, {a / w['bf16']:.3f} bf16, "
              f"{a / block:.2f} x the two streamed fp8 blocks")
    return summary


# ---------------------------------------------------------------- 4. training (--training)

#: text + target (+ one control), 512 px; RefAny3D's layout with 2 views of 512 px (2 targets + 4
#: condition branches, 6656 tokens): 8 views (18944 tokens) in fp32 exceed this 23 GiB host's RAM
TRAIN_CASES = ("stage1", "stage2", "refany3d:2")


def train_child(case: str, kind: str, checkpointing: bool, quick: bool) -> dict:
    """One training step (forward + backward) of a one-block full-width transformer; prints JSON."""
    from diffusers import FluxPipeline
    from torch.profiler import ProfilerActivity, profile

    from realiz3d.engine import Branch, FluxEngine
    from realiz3d.training.lora import add_lora

    torch.set_num_threads(2)
    width_override = {"num_attention_heads": 4} if quick else {}
    model = build_meta(num_layers=int(kind == "double"), num_single_layers=int(kind == "single"), **width_override)
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    model.requires_grad_(False)
    views = int(case.split(":")[1]) if ":" in case else 8          # "refany3d:2": 2 views of 512 px
    case = case.split(":")[0]
    names = {"stage2": ["control", "target"], "refany3d": ["default", "coord"]}.get(case, [])
    trained = []
    for name in names:
        trained += list(add_lora(model, name, LORA_RANK, LORA_RANK, LORA_TARGETS).values())
    width = model.config.num_attention_heads * model.config.attention_head_dim
    embedder = None
    if case == "refany3d":
        from realiz3d.refany3d import make_domain_embedder
        embedder = make_domain_embedder(width)
        trained += list(embedder.parameters())
    engine = FluxEngine(model, embedder, checkpointing=checkpointing)
    g = torch.Generator().manual_seed(0)
    t, gd = torch.tensor([0.6]), torch.tensor([3.5])
    mask, outputs = None, [1]
    if case == "refany3d":              # the real layout: 2 targets + 2 x 8 views, group mask, per-branch LoRAs
        spec = case_spec("refany3d", quick)
        if not quick:
            n = layout.num_branches(views)
            spec.update(lengths=[spec["text"]] + [spec["side"] ** 2] * (n - 1), mask=layout.group_mask(views),
                        adapters=layout.adapters(views), domains=layout.domain_tags(views))
        side, text, lengths, mask, outputs = spec["side"], spec["text"], spec["lengths"], spec["mask"], [1, 2]
        ids = FluxPipeline._prepare_latent_image_ids(1, side, side, "cpu", torch.float32)
        adapters = [tuple({"default": "default", "coord": "coord"}[a] for a in ad) for ad in spec["adapters"]]
        branches = [Branch(torch.randn(1, text, model.config.joint_attention_dim, generator=g), torch.zeros(text, 3),
                           t, gd, is_text=True, name="text")]
        for i in range(1, len(lengths)):
            cond = i >= spec["conditions_from"]
            branches.append(Branch(torch.randn(1, lengths[i], model.config.in_channels, generator=g), ids,
                                   torch.zeros(1) if cond else t, torch.ones(1) if cond else gd, adapters[i],
                                   spec["domains"][i], name=f"branch{i}"))
    else:
        side, text = (8, 64) if quick else (32, 512)             # 512 px: a 32 x 32 grid of 2x2 patches
        ids = FluxPipeline._prepare_latent_image_ids(1, side, side, "cpu", torch.float32)
        branches = [Branch(torch.randn(1, text, model.config.joint_attention_dim, generator=g), torch.zeros(text, 3),
                           t, gd, is_text=True, name="text"),
                    Branch(torch.randn(1, side * side, model.config.in_channels, generator=g), ids, t, gd,
                           ("target",) if names else (), name="target")]
        if case == "stage2":
            branches.append(Branch(torch.randn(1, side * side, model.config.in_channels, generator=g), ids,
                                   torch.zeros(1), torch.ones(1), ("control",), name="control"))
    pooled = torch.randn(1, model.config.pooled_projection_dim, generator=g)
    params = {p.data_ptr() for p in model.parameters()}
    saved = {"bytes": 0, "seen": set()}

    def pack(x):
        ptr = x.untyped_storage().data_ptr() if x.device.type != "meta" else 0
        if ptr not in params and ptr not in saved["seen"]:
            saved["seen"].add(ptr)
            saved["bytes"] += x.untyped_storage().nbytes()
        return x

    gc.collect()
    rss_before, maxrss_before = rss_now(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    if not names:       # stage 1: the shifters add to the target's input of every block, so the backward
        branches[1].tokens.requires_grad_(True)         # runs through every block: a gradient at the input stands in
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            out = engine.forward(branches, mask, pooled, outputs=outputs)
            loss = sum(out[i].float().square().mean() for i in outputs)
        loss.backward()
    seconds = time.perf_counter() - start
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times, live, _ = timeline(prof, [])
    tokens = sum(b.tokens.shape[1] for b in branches)
    unit = tokens * width * 4                           # one fp32 hidden state over all tokens
    return {"case": case + (f":{views}" if case == "refany3d" else ""), "block": kind, "checkpointing": checkpointing, "tokens": tokens, "width": width,
            "seconds": seconds, "peak": float(live.max()), "saved": saved["bytes"],
            "peak_units": float(live.max()) / unit, "saved_units": saved["bytes"] / unit,
            "rss_growth": maxrss_after - rss_before, "rss_valid": maxrss_after > maxrss_before,
            "trained_params": sum(p.numel() for p in trained)}


def run_train_child(case, kind, checkpointing, quick) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--train-child", case, kind, str(int(checkpointing))]
    run = subprocess.run(cmd + ["--quick"] * quick, capture_output=True, text=True)
    if run.returncode:
        sys.exit(f"child {case}/{kind}/ckpt={checkpointing} failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def training_report(runs: list, quick: bool) -> dict:
    from realiz3d.training import load_config
    from realiz3d.training.memory import GiB as G, base_parameters, lora_parameters, training_memory

    flux = {"num_double": 19, "num_single": 38, "hidden": 3072}
    recipes = {
        "stage1 (shifters), 512 px": {"recipe": "stage1"},
        "stage2 LoRA r16, 1 control, 512 px": {"recipe": "stage2", "data": {"controls": ["normal"]}, **SHIFTERS},
        "RefAny3D LoRA r16, 8 views x 512 px": {"recipe": "refany3d"},
        "RefAny3D LoRA r16, 7 views x 512 px": {"recipe": "refany3d", "refany3d": {"n_views": 7}},
        "RefAny3D LoRA r16, 4 views x 512 px": {"recipe": "refany3d", "refany3d": {"n_views": 4}},
        "RefAny3D LoRA r16, 8 views x 448 px": {"recipe": "refany3d", "refany3d": {"condition_size": 448}},
        "RefAny3D LoRA r16, 8 views x 256 px": {"recipe": "refany3d", "refany3d": {"condition_size": 256}},
        "stage2 full fine-tuning (bf16 weights), 512 px": {"recipe": "stage2", "data": {"controls": ["normal"]},
                                                            "stage2": {"full_finetune": True, **SHIFTERS["stage2"]},
                                                            "model": {"dtype": "bf16"}},
    }
    print("\ntraining: one block's forward + backward at full width, CPU, fp32 (units: bytes per token and hidden "
          "unit / dtype size)")
    print(f"  {'case':8s} {'block':7s} {'ckpt':5s} {'tokens':>6s} {'peak GiB':>9s} {'peak u':>7s} {'saved u':>8s} "
          f"{'RSS GiB':>8s} {'s':>6s}")
    for r in runs:
        print(f"  {r['case']:8s} {r['block']:7s} {str(r['checkpointing']):5s} {r['tokens']:6d} {r['peak'] / G:9.3f} "
              f"{r['peak_units']:7.1f} {r['saved_units']:8.1f} {r['rss_growth'] / G:8.3f} {r['seconds']:6.1f}")
    measured = {}
    for layout_kind, cases in (("full", ("stage1", "stage2")), ("refany3d", ("refany3d",))):
        rs = [r for r in runs if r["case"].split(":")[0] in cases]
        if rs:
            measured[layout_kind] = {
                **{k: max((r["saved_units"] for r in rs if r["block"] == k and not r["checkpointing"]),
                          default=float("nan"))
                   for k in ("double", "single")}, "peak": max(r["peak_units"] for r in rs)}
    print(f"  FLUX.1 parameters {base_parameters(flux) / 1e9:.2f} B; one rank-16 LoRA on SPEC's targets "
          f"{lora_parameters(flux, 16) / 1e6:.1f} M")
    table = {}
    print(f"\n  {'GiB per step (fp8 weights, bf16 activations)':50s} {'weights':>8s} {'train+grad+adam':>16s} "
          f"{'act. ckpt':>10s} {'act. no ckpt':>13s} {'total ckpt':>11s} {'fits 24':>8s}")
    for label, raw in recipes.items():
        cfg = load_config({**raw, "train": {"gradient_checkpointing": True}})
        wb = 2 if cfg.stage2.full_finetune else 1
        on = training_memory(flux, cfg, weight_bytes=wb, checkpointing=True)
        off = training_memory(flux, cfg, weight_bytes=wb, checkpointing=False)
        p = on.parts
        opt = p["trainables"] + p["gradients"] + p["optimizer"]
        table[label] = {"ckpt": on.parts, "no_ckpt": off.parts, "tokens": on.tokens, "total_ckpt": on.total,
                        "total_no_ckpt": off.total}
        print(f"  {label:50s} {p['weights'] / G:8.1f} {opt / G:16.1f} {p['activations'] / G:10.1f} "
              f"{off.parts['activations'] / G:13.1f} {on.total / G:11.1f} {str(on.total <= 24 * G):>8s}")
    from realiz3d.training.memory import PEAK_UNITS, SAVED_UNITS
    for kind, m in measured.items():
        print(f"  units ({kind}): measured saved double {m['double']:.1f}, single {m['single']:.1f}, peak "
              f"{m['peak']:.1f}; {SAVED_UNITS_NOTE} {SAVED_UNITS[kind]}, PEAK_UNITS {PEAK_UNITS[kind]}"
              + (" (quick mode: reduced width/tokens)" if quick else ""))
    return {"recipes": table, "measured_units": measured}


SAVED_UNITS_NOTE = "training.memory.SAVED_UNITS"
SHIFTERS = {"stage2": {"shifters": "stage1_shifters.safetensors"}}      # a name: the estimate reads no file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--training", action="store_true")
    ap.add_argument("--train-child", nargs=3, metavar=("CASE", "BLOCK", "CKPT"))
    ap.add_argument("--fp32", action="store_true")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--case", action="append", choices=CASES,
                    help="measure only this case (repeatable); the stored runs of the other cases are kept")
    ap.add_argument("--child", nargs=3, metavar=("CASE", "BLOCK", "DTYPE"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.quick)))
        return
    if args.train_child:
        case, kind, ckpt = args.train_child
        print(json.dumps(train_child(case, kind, ckpt == "1", args.quick)))
        return
    if args.training:
        out = os.path.join(ROOT, "benchmarks", "results", "memory_training.json")
        t0 = time.perf_counter()
        if args.report:
            with open(out) as f:
                runs = json.load(f)["runs"]
        else:
            runs = []
            for case in TRAIN_CASES:
                for kind in ("double", "single"):
                    # one block: checkpointing changes what the other blocks keep, not this block's peak;
                    # RefAny3D (minutes per forward here) runs without it only
                    for ckpt in ((False,) if case.startswith("refany3d") else (False, True)):
                        runs.append(run_train_child(case, kind, ckpt, args.quick))
                        r = runs[-1]
                        print(f"{case} {kind} ckpt={ckpt}: {r['tokens']} tokens, {r['seconds']:.1f} s, peak "
                              f"{r['peak'] / GiB:.3f} GiB, saved {r['saved'] / GiB:.3f} GiB", flush=True)
        summary = training_report(runs, args.quick)
        if not args.report:
            with open(out, "w") as f:
                json.dump({"quick": args.quick, "threads": 2, "seconds": time.perf_counter() - t0, "runs": runs,
                           **summary}, f, indent=1)
            print("written", os.path.relpath(out, ROOT))
        return
    out = os.path.join(ROOT, "benchmarks", "results", "memory_quick.json" if args.quick else "memory.json")
    if args.report:
        with open(out) as f:
            res = json.load(f)
        report(res["weights"], res["runs"], sorted({r["dtype"] for r in res["runs"]}, key=list(DTYPES).index),
               res["quick"])
        print(f"\n(from {os.path.relpath(out, ROOT)}: measured in {res['seconds']:.0f} s, {res['threads']} threads)")
        return
    t0 = time.perf_counter()
    w = weight_bytes()
    dtype_names = ["bf16"] + (["fp32"] if args.fp32 else [])
    runs, earlier = [], 0.0
    if args.case and os.path.isfile(out):
        with open(out) as f:
            stored = json.load(f)
        if stored["quick"] == args.quick:
            runs = [r for r in stored["runs"] if r["case"] not in args.case and r["dtype"] in dtype_names]
            earlier = stored["seconds"]
    for dn in dtype_names:
        for case in args.case or CASES:
            for kind in ("double", "single"):
                runs.append(run_child(case, kind, dn, args.quick))
                r = runs[-1]
                print(f"{case:9s} {kind:6s} {dn}: {r['tokens']} tokens, {r['seconds']:6.1f} s forward, "
                      f"peak {r['forward_peak_profiler'] / GiB:.3f} GiB (RSS {r['rss_growth'] / GiB:.3f})", flush=True)
    summary = report(w, runs, dtype_names, args.quick)
    total = time.perf_counter() - t0 + earlier
    print(f"\ntotal {total:.0f} s, 2 threads per forward{' (quick mode: reduced tokens)' if args.quick else ''}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"quick": args.quick, "threads": 2, "seconds": total, "weights": w, "runs": runs,
                   "device_peaks": summary, "goals_gib": {"full_fp8": 16, "partial": 12}}, f, indent=1)
    print("written", os.path.relpath(out, ROOT))


if __name__ == "__main__":
    main()
