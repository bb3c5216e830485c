"""Toy experiment for Realiz3D (SPEC.md section 3): does domain-aware training keep generated
images realistic while a geometry control is learned from flat synthetic renders, compared
with standard fine-tuning on the same data and budget?

Steps (all seeded, CPU):
 1. toy domains (data.py): photo-like "real" images; flat "synthetic" renders with normal maps;
 2. a toy VAE (toy_vae.py) trained on both, then a real-vs-synthetic classifier and a
    foreground segmenter (metrics.py) trained on VAE round trips, checked on held-out images;
 3. a small Flux-family base model pretrained on the real domain (full fine-tuning, no control);
 4. the control taught twice from that base, equal step budget:
    A. Realiz3D: stage 1 (domain shifters, frozen backbone), then stage 2 (control LoRA, domain
       reassignment + layer-aware freezing);
    B. standard fine-tuning (stage 2 with ``baseline: true``: same data, no shifters);
 5. controlled samples on held-out control maps (same seeds for every method): realism (mean
    P(real) from the classifier) and control fidelity (IoU of the segmented object with the
    control's silhouette). A samples with the ``real`` domain schedule (and layer-aware /
    synthetic for reference), B plain.
Writes benchmarks/results/toy_experiment.json and .md, and contact sheets in --work.

Usage: .cache/host/venv/bin/python benchmarks/toy_experiment/run.py [--quick] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, HERE)
from pack_import import import_pack  # noqa: E402

import_pack()
import numpy as np  # noqa: E402
import torch  # noqa: E402

import data  # noqa: E402
import evaluate  # noqa: E402
from jobs import Jobs  # noqa: E402
import metrics  # noqa: E402
import recipes  # noqa: E402
import sweep  # noqa: E402
import toy_model  # noqa: E402
import toy_vae  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")


@dataclass
class Sizes:
    """Every size of the run; --quick shrinks them all for a smoke run of a few minutes."""
    size: int = 64                  # image side, px (an 8x VAE: 8 x 8 latents = 16 tokens; judges see 32 px)
    n_real: int = 2000              # training images per domain
    n_synthetic: int = 1500
    n_test: int = 300               # held-out images per domain (classifier / segmenter checks)
    n_eval: int = 48                # held-out control maps generated (and references scored)
    n_sweep: int = 24               # of them, sampled at every knob of every method
    vae_steps: int = 700
    vae_batch: int = 12
    classifier_steps: int = 400
    segmenter_steps: int = 1500
    base_steps: int = 1500          # real-domain pretraining of the base model
    stage1_steps: int = 250         # A: domain shifters
    stage2_steps: int = 750         # A: control + target LoRAs with reassignment
    baseline_steps: int = 1000      # B: = stage1_steps + stage2_steps (equal budget)
    batch: int = 32
    sample_steps: int = 16
    guidance: float = 1.0           # the guidance-embedding value used in training and sampling
    tau_b: int = 3                  # Realiz3D's tau_B: up to this many leading blocks reassigned
    k_layers: int = 2               # layer-aware sampling schedule: synthetic in blocks < k_layers
    lora_rank: int = 16
    shifter_rank: int = 8
    shifter_variant: str = "bias"   # bias (the paper's figure) | token
    stage2_real_ratio: float = 0.5  # A's stage 2: share of real samples (B always trains on 0.5)
    base_lr: float = 5e-4           # full fine-tuning of the base
    shifter_lr: float = 2e-3        # stage 1
    lora_lr: float = 1e-3           # stage 2 and the baseline (control + target LoRAs)
    controls: tuple = ("normal",)


QUICK = dict(n_real=200, n_synthetic=200, n_test=60, n_eval=8, n_sweep=6, vae_steps=120, vae_batch=8,
             classifier_steps=60, segmenter_steps=150, base_steps=120, stage1_steps=30, stage2_steps=60,
             baseline_steps=90, batch=16, sample_steps=6)
#: the fields that the shared stage (data, VAE, judges, base) depends on: its cache key
SHARED_FIELDS = ("size", "n_real", "n_synthetic", "n_test", "n_eval", "vae_steps", "vae_batch", "classifier_steps",
                 "segmenter_steps", "base_steps", "batch", "base_lr", "guidance", "controls")
#: Realiz3D recipe variants (overrides of Sizes for method A only; B keeps its recipe and budget).
#: ``stage1_share`` splits A's step budget (stage1_steps + stage2_steps) between the two stages,
#: so a variant keeps the budget, and its split, in --quick too.
VARIANTS = {
    "paper": {},                                                         # the recipe of the first toy run
    # stage 1 with more capacity: token-dependent shifters (SPEC's [ours] option), rank 16; same steps
    "token": {"shifter_variant": "token", "shifter_rank": 16},
    # stage 1 with more capacity: token-dependent shifters, rank 16, twice the steps (stage 2 gives them up)
    "token-s1x2": {"shifter_variant": "token", "shifter_rank": 16, "stage1_share": 0.5},
    # bias shifters, twice the stage-1 steps (same total)
    "bias-s1x2": {"stage1_share": 0.5},
    # token shifters, with reassignment over every block (tau_B = all 6) and more real samples in stage 2
    "token-tau6-real0.7": {"shifter_variant": "token", "shifter_rank": 16, "tau_b": 6, "stage2_real_ratio": 0.7},
    # token shifters, a short stage 1 (token shifters learn the gap in fewer steps) and a longer stage 2:
    # 100 + 900 steps in the full run
    "token-s2x1.2": {"shifter_variant": "token", "shifter_rank": 16, "stage1_share": 0.1},
}


def variant_sizes(z: Sizes, variant: str) -> Sizes:
    """Sizes of method A under a recipe variant."""
    over = dict(VARIANTS[variant])
    share = over.pop("stage1_share", None)
    za = Sizes(**{**asdict(z), **over})
    if share is not None:
        budget = z.stage1_steps + z.stage2_steps
        za.stage1_steps = max(1, round(share * budget))
        za.stage2_steps = budget - za.stage1_steps
    return za


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_data(z: Sizes, work: str) -> dict:
    """The splits (cached in work/data.npz, folders written once)."""
    path = os.path.join(work, "data.npz")
    key = f"{z.size}-{z.n_real}-{z.n_synthetic}-{z.n_test}-{z.n_eval}"
    if os.path.isfile(path):
        with np.load(path) as f:
            if str(f["key"]) == key:
                log("toy domains from the cache")
                d = {}
                for name in f.files:
                    if name != "key":
                        split, field = name.split("/")
                        d.setdefault(split, {})[field] = f[name]
                return d
    log("generating toy domains")
    d = {"real": data.make_split("real", z.n_real, z.size, seed=1),
         "synthetic": data.make_split("synthetic", z.n_synthetic, z.size, seed=2),
         "real_test": data.make_split("real", z.n_test, z.size, seed=101),
         "synthetic_test": data.make_split("synthetic", z.n_test, z.size, seed=102),
         "eval": data.make_split("synthetic", z.n_eval, z.size, seed=103)}
    data.write_folder(d["real"], os.path.join(work, "data", "real"), controls=())
    data.write_folder(d["synthetic"], os.path.join(work, "data", "synthetic"), controls=z.controls)
    for name in ("real", "synthetic"):
        data.contact_sheet(d[name]["image"][:32], os.path.join(work, f"data_{name}.png"), scale=2)
    np.savez(path, key=key, **{f"{k}/{f}": v for k, split in d.items() for f, v in split.items()})
    return d


def controls_of(split: dict, kinds) -> np.ndarray:
    """[N, C, S, S, 3]: the control maps of every sample, in ``kinds`` order."""
    return np.stack([split[k] for k in kinds], axis=1)


def base_weights(transformer) -> dict:
    """The transformer's own weights (peft wrappers see through, LoRA matrices left out)."""
    return {k.replace(".base_layer.", "."): v.detach().clone() for k, v in transformer.state_dict().items()
            if ".lora_" not in k}


def check_same_base(transformer, reference: dict) -> None:
    now = base_weights(transformer)
    changed = [k for k, v in reference.items() if not torch.equal(v, now[k])]
    if changed or now.keys() != reference.keys():
        raise RuntimeError(f"the base weights changed during LoRA training ({changed[:3]}); B would not start "
                           "from A's base")


JUDGE_FIELDS = ("size", "n_real", "n_synthetic", "n_test", "n_eval", "vae_steps", "vae_batch", "classifier_steps",
                "segmenter_steps", "controls")


def shared_key(z: Sizes, base_loop: str) -> str:
    return json.dumps({f: getattr(z, f) for f in SHARED_FIELDS} | {"base_loop": base_loop,
                                                                   "transformer": toy_model.TOY_TRANSFORMER,
                                                                   "vae": toy_vae.VAE_SIZES,
                                                                   "text_tokens": recipes.TEXT_TOKENS}, sort_keys=True)


def judge_key(z: Sizes) -> str:
    return json.dumps({f: getattr(z, f) for f in JUDGE_FIELDS} | {"vae": toy_vae.VAE_SIZES}, sort_keys=True)


def _load(path: str, key: str):
    cached = torch.load(path, weights_only=False) if os.path.isfile(path) else None
    return cached if cached is not None and cached.get("key") == key else None


def shared_stage(z: Sizes, work: str, d: dict, base_loop: str = "library") -> dict:
    """Independent of the methods: the VAE and the judges (cached in work/judges.pt), then the
    base model (pipe holds it; cached in work/base.pt), each keyed by the sizes it depends on."""
    t0 = time.time()
    cached = _load(os.path.join(work, "judges.pt"), judge_key(z))
    if cached is not None:
        log("VAE and judges from the cache")
        vae = toy_vae.build_vae(0, cached["vae_shift"], cached["vae_scale"])
        vae.load_state_dict(cached["vae"])
        vae.eval()
        classifier, segmenter = metrics.DomainClassifier(), metrics.Segmenter()
        classifier.load_state_dict(cached["classifier"]), segmenter.load_state_dict(cached["segmenter"])
        classifier.eval(), segmenter.eval()
        judges, vae_hist, judges_s = cached["judges"], cached["vae_hist"], cached["judges_s"]
        rt = {k: toy_vae.roundtrip(vae, d[k]["image"][:z.n_eval]) for k in ("real_test", "synthetic_test")}
    else:
        imgs = np.concatenate([d["real"]["image"], d["synthetic"]["image"]] + [d["synthetic"][k] for k in z.controls])
        (vae, vae_hist), vae_s = evaluate.timed(toy_vae.train_vae, imgs, z.vae_steps, batch=z.vae_batch, log=log)
        rt = {k: toy_vae.roundtrip(vae, d[k]["image"]) for k in ("real", "synthetic", "real_test", "synthetic_test")}
        data.contact_sheet(np.concatenate([d["real_test"]["image"][:8], rt["real_test"][:8],
                                           d["synthetic_test"]["image"][:8], rt["synthetic_test"][:8]]),
                           os.path.join(work, "vae_roundtrip.png"), scale=2)
        classifier = metrics.train_classifier(rt["real"], rt["synthetic"], z.classifier_steps, log=log)
        segmenter = metrics.train_segmenter(np.concatenate([rt["real"], rt["synthetic"]]),
                                            np.concatenate([d["real"]["mask"], d["synthetic"]["mask"]]),
                                            z.segmenter_steps, log=log)
        p_real = metrics.real_probability(classifier, rt["real_test"])
        p_syn = metrics.real_probability(classifier, rt["synthetic_test"])
        judges = {"classifier_heldout_accuracy": float(((p_real > 0.5).sum() + (p_syn <= 0.5).sum()) / (2 * z.n_test)),
                  "segmenter_heldout_iou_real": float(metrics.iou(metrics.segment(segmenter, rt["real_test"]),
                                                                  d["real_test"]["mask"]).mean()),
                  "segmenter_heldout_iou_synthetic": float(metrics.iou(metrics.segment(segmenter,
                                                                                       rt["synthetic_test"]),
                                                                       d["synthetic_test"]["mask"]).mean()),
                  "vae_final_mse": vae_hist[-1][1], "vae_train_s": vae_s}
        log(f"judges: {judges}")
        judges_s = time.time() - t0
        torch.save({"key": judge_key(z), "vae": vae.state_dict(), "vae_shift": vae.config.shift_factor,
                    "vae_scale": vae.config.scaling_factor, "classifier": classifier.state_dict(),
                    "segmenter": segmenter.state_dict(), "judges": judges, "vae_hist": vae_hist,
                    "judges_s": judges_s}, os.path.join(work, "judges.pt"))
        rt = {k: v[:z.n_eval] for k, v in rt.items() if k.endswith("_test")}
    pipe = toy_model.build_pipeline(vae, tokenizer_dir=os.path.join(work, "tokenizer"))
    cached_base = _load(os.path.join(work, "base.pt"), shared_key(z, base_loop))
    if cached_base is not None:
        log("base model from the cache")
        pipe.transformer.load_state_dict(cached_base["base"])
        base_out = cached_base["base_out"]
    else:
        if base_loop == "library":
            base_out = recipes.pretrain_base(pipe, d, z, work, log)
            base_out.pop("outputs", None)
        else:
            t1 = time.time()
            hist = toy_model.pretrain(pipe, toy_model.encode_latents(pipe, d["real"]["image"]), z.size, z.base_steps,
                                      batch=z.batch, lr=2 * z.base_lr, guidance=z.guidance, log=log,
                                      prompt=data.CAPTION)
            base_out = {"losses": hist, "train_s": time.time() - t1}
        torch.save({"key": shared_key(z, base_loop), "base": base_weights(pipe.transformer), "base_out": base_out},
                   os.path.join(work, "base.pt"))
    cached_all = cached is not None and cached_base is not None
    shared_s = judges_s + base_out["train_s"]
    return {"vae": vae, "classifier": classifier, "segmenter": segmenter, "pipe": pipe, "judges": judges,
            "vae_hist": vae_hist, "base_out": base_out, "rt": rt, "shared_s": shared_s, "cached": cached_all}


class Sweeper:
    """Samples the held-out controls under each knob of a trained model and scores them."""

    def __init__(self, z: Sizes, ctx: dict, d: dict):
        self.z, self.ctx = z, ctx
        self.controls = controls_of(d["eval"], z.controls)[:z.n_sweep]
        self.masks = d["eval"]["mask"][:z.n_sweep]
        tr = ctx["pipe"].transformer
        self.num_blocks = len(tr.transformer_blocks) + len(tr.single_transformer_blocks)

    def images(self, knob: sweep.Knob, trained: dict, controls: bool = True) -> np.ndarray:
        z, pipe = self.z, self.ctx["pipe"]
        ca, ta = trained.get("adapters", ()), trained.get("target_adapters", ())
        schedule = sweep.schedule_of(knob, self.num_blocks, z.sample_steps)
        with sweep.lora_scale(pipe.transformer, ca, knob.control_scale), \
                sweep.lora_scale(pipe.transformer, ta, knob.target_scale):
            return evaluate.sample_set(pipe, data.CAPTION, self.controls if controls else None, count=z.n_sweep,
                                       size=z.size, steps=z.sample_steps,
                                       guidance=z.guidance if knob.guidance is None else knob.guidance,
                                       control_adapters=ca, target_adapters=ta,
                                       shifters=trained.get("shifters") if schedule is not None else None,
                                       schedule=schedule)

    def run(self, knobs: list, trained: dict, keep: tuple = ()) -> tuple[list, dict]:
        """(rows, {label: first 16 images} for the labels in ``keep``)."""
        rows, kept = [], {}
        for knob in knobs:
            t0 = time.time()
            imgs = self.images(knob, trained)
            r = {**knob.as_dict(), **evaluate.score(imgs, self.masks, self.ctx["classifier"], self.ctx["segmenter"]),
                 "sample_s": time.time() - t0}
            rows.append(r)
            if knob.label in keep:
                kept[knob.label] = imgs[:16]
            log(f"  {knob.method} {knob.label}: realism {r['realism']:.3f} IoU {r['iou']:.3f} ({r['sample_s']:.0f}s)")
        return rows, kept


def run_method(method: str, z: Sizes, ctx: dict, sweeper: Sweeper, work: str, seed: int, variant: str,
               quick: bool, reuse: bool, after_stage1=None) -> dict:
    """Train one method for one seed (A under a recipe variant), sweep its knobs; cached in
    work/seed<seed>/<method>[_<variant>]/points.json (with --reuse)."""
    pipe = ctx["pipe"]
    name = "B" if method == "B" else f"A_{variant}"
    folder = os.path.join(work, f"seed{seed}")
    cache = os.path.join(folder, name, "points.json")
    if reuse and os.path.isfile(cache):
        with open(cache) as f:
            out = json.load(f)
        log(f"{name} seed {seed}: from the cache ({cache})")
        return out
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    keep = ("real", "synthetic", f"layer-aware k={z.k_layers}", "control x1")
    diagnostics = []
    if method == "A":
        za = variant_sizes(z, variant)
        hook = None if after_stage1 is None else (lambda sh, sec: diagnostics.extend(after_stage1(sh, sec)))
        trained = recipes.train_realiz3d(pipe, za, work, log, after_stage1=hook, seed=seed, name=name,
                                         out_root=folder)
        knobs = sweep.realiz3d_grid(sweeper.num_blocks, quick)
    else:
        trained = recipes.train_baseline(pipe, z, work, log, seed=seed, name=name, out_root=folder)
        knobs = sweep.baseline_grid(quick)
    rows, kept = sweeper.run(knobs, trained, keep)
    recipes.detach(pipe, trained)
    check_same_base(pipe.transformer, ctx["base_state"])
    out = {"method": method, "variant": variant if method == "A" else None, "seed": seed, "rows": rows,
           "diagnostics": diagnostics,
           "train_s": trained["train_s"], "train_s_parts": trained.get("train_s_parts"),
           "losses": trained["losses"], "outputs": trained["outputs"],
           "recipe": ({k: getattr(za, k) for k in ("stage1_steps", "stage2_steps", "tau_b", "shifter_rank",
                                                    "shifter_variant", "stage2_real_ratio", "shifter_lr")}
                      if method == "A" else {"baseline_steps": z.baseline_steps})}
    np.savez_compressed(os.path.join(folder, name, "kept.npz"), **{k.replace("/", "_"): v for k, v in kept.items()})
    with open(cache, "w") as f:
        json.dump(out, f, indent=1)
    return out


def kept_images(work: str, seed: int, name: str) -> dict:
    path = os.path.join(work, f"seed{seed}", name, "kept.npz")
    if not os.path.isfile(path):
        return {}
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few minutes")
    ap.add_argument("--work", default=None,
                    help="working folder (data, weights, sheets); default /tmp/realiz3d_toy[_quick]")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds of A and B (default 0 1)")
    ap.add_argument("--variant", default="token", choices=sorted(VARIANTS), help="Realiz3D recipe of the fronts")
    ap.add_argument("--ablation", nargs="*", default=None, choices=sorted(VARIANTS),
                    help="recipe variants also run on the first seed (A only), for the ablation table")
    ap.add_argument("--methods", nargs="+", default=("A", "B"), choices=("A", "B"),
                    help="train and sweep only these (the others from the cache, when there)")
    ap.add_argument("--reuse", action="store_true",
                    help="reuse cached per-seed sweeps (work/seed*/*/points.json); the shared stage is always cached")
    ap.add_argument("--jobs", type=int, default=1,
                    help="after the shared stage, train and sweep the seeds (and --ablation variants) in this many "
                         "parallel processes of --threads threads each (2 on 2 cores, with --threads 1)")
    ap.add_argument("--seed-only", action="store_true", help=argparse.SUPPRESS)   # a --jobs child: no report
    ap.add_argument("--base-loop", choices=("library", "own"), default="library",
                    help="pretrain the base with the training library (stage 2, baseline, full fine-tuning, real "
                         "images only) or with toy_model.pretrain (plain loop, for comparison)")
    args = ap.parse_args(argv)
    z = Sizes(**(QUICK if args.quick else {}))
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1])
    work = args.work or ("/tmp/realiz3d_toy_quick" if args.quick else "/tmp/realiz3d_toy")
    os.makedirs(work, exist_ok=True)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    if args.jobs > 1 and not args.seed_only:    # the shared stage has the machine to itself: all the cores
        torch.set_num_threads(args.threads * args.jobs)
    d = make_data(z, work)
    ctx = shared_stage(z, work, d, args.base_loop)
    torch.set_num_threads(args.threads)
    jobs = None
    if args.jobs > 1 and not args.seed_only:
        tasks = [(f"seed {seed}", ["--seeds", str(seed), "--variant", args.variant, "--methods", *args.methods])
                 for seed in seeds]
        tasks += [(f"variant {v}", ["--seeds", str(seeds[0]), "--variant", v, "--methods", "A"])
                  for v in args.ablation or ()]
        jobs = Jobs(tasks, args, work, script=os.path.abspath(__file__), log=log)
    pipe, classifier, segmenter = ctx["pipe"], ctx["classifier"], ctx["segmenter"]
    ctx["base_state"] = base_weights(pipe.transformer)
    sweeper = Sweeper(z, ctx, d)
    diagnostics = []

    def shifters_alone(shifters, seconds):
        from realiz3d.adapters import make_schedule
        rows = []
        for preset in ("real", "synthetic"):
            imgs = evaluate.sample_set(pipe, data.CAPTION, None, count=z.n_sweep, size=z.size, steps=z.sample_steps,
                                       guidance=z.guidance, shifters=shifters, schedule=make_schedule(preset))
            r = {"label": f"base + stage-1 shifters, no control, {preset}",
                 **evaluate.score(imgs, sweeper.masks, classifier, segmenter), "stage1_s": seconds}
            rows.append(r)
            log(f"diagnostic {r['label']}: realism {r['realism']:.3f}")
        return rows

    if args.seed_only:                   # a --jobs child: train and sweep, the parent writes the report
        for seed in seeds:
            for method in args.methods:
                run_method(method, z, ctx, sweeper, work, seed, args.variant, args.quick, args.reuse,
                           after_stage1=shifters_alone)
        return {}
    refs, sheets = [], {}

    def ref(label, images, masks, note=""):
        r = {"label": label, "method": "ref", **evaluate.score(images, masks, classifier, segmenter), "note": note}
        refs.append(r)
        log(f"reference {label}: realism {r['realism']:.3f} IoU {r['iou']:.3f}")
        return r

    ref("held-out real (VAE round trip)", ctx["rt"]["real_test"], d["real_test"]["mask"][:z.n_eval],
        "IoU of the segmenter with the true masks")
    ref("held-out synthetic (VAE round trip)", ctx["rt"]["synthetic_test"], d["synthetic_test"]["mask"][:z.n_eval])
    base_imgs = sweeper.images(sweep.Knob("base", "base"), {}, controls=False)
    ref("base model, no control", base_imgs, sweeper.masks, "IoU against the eval masks = chance level")
    sheets["base model, no control"] = base_imgs[:16]

    if jobs is not None:
        jobs.wait()
    per_seed = {"A": {}, "B": {}}
    runs = []
    for seed in seeds:
        for method in ("A", "B"):
            reuse = args.reuse or method not in args.methods or jobs is not None
            out = run_method(method, z, ctx, sweeper, work, seed, args.variant, args.quick, reuse,
                             after_stage1=shifters_alone)
            per_seed[method][seed] = out["rows"]
            if method == "A":
                diagnostics += [{**r, "seed": seed} for r in out.get("diagnostics", [])]
            runs.append({k: v for k, v in out.items() if k != "rows"})
    ablation = []
    for variant in args.ablation or ():
        out = run_method("A", z, ctx, sweeper, work, seeds[0], variant, args.quick, True, after_stage1=shifters_alone)
        ablation.append(out)
    a_rows, b_rows = sweep.aggregate(per_seed["A"]), sweep.aggregate(per_seed["B"])
    headline = sweep.compare(a_rows, b_rows)
    log(f"headline: {headline}")

    stem = "toy_experiment" + ("_quick" if args.quick else "")
    os.makedirs(RESULTS, exist_ok=True)
    plot = sweep.plot_fronts(os.path.join(RESULTS, stem + "_fronts.png"), a_rows, b_rows, refs,
                             title=f"{len(seeds)} seed(s), mean +- std over seeds")
    for o in ablation:                    # one plot per recipe variant: its seed against B of the same seed
        sweep.plot_fronts(os.path.join(RESULTS, f"{stem}_fronts_{o['variant']}.png"),
                          sweep.aggregate({seeds[0]: o["rows"]}), sweep.aggregate({seeds[0]: per_seed["B"][seeds[0]]}),
                          refs, title=f"A recipe '{o['variant']}' vs B, seed {seeds[0]}")
    # contact sheet: control maps, base, then the kept samples of the first seed
    cols = min(16, z.n_sweep)
    a_kept, b_kept = kept_images(work, seeds[0], f"A_{args.variant}"), kept_images(work, seeds[0], "B")
    for label, imgs in a_kept.items():
        sheets[f"A {label}"] = imgs
    for label, imgs in b_kept.items():
        sheets[f"B {label}"] = imgs
    sheet_rows = [controls_of(d["eval"], z.controls)[:cols, 0]] + [v[:cols] for v in sheets.values()]
    data.contact_sheet(np.concatenate(sheet_rows), os.path.join(work, "samples.png"), cols=cols, scale=1)
    result = {"sizes": asdict(z), "quick": args.quick, "seeds": seeds, "variant": args.variant,
              "recipe": VARIANTS[args.variant], "judges": ctx["judges"], "references": refs,
              "diagnostics": diagnostics, "fronts": {"A": a_rows, "B": b_rows,
                                                     "A_front": [r["label"] for r in sweep.front(a_rows)],
                                                     "B_front": [r["label"] for r in sweep.front(b_rows)]},
              "headline": headline, "per_seed": per_seed, "runs": runs,
              "ablation": [{"variant": o["variant"], "recipe": o["recipe"], "train_s": o["train_s"],
                            "headline": sweep.compare(o["rows"], per_seed["B"][seeds[0]]),
                            "rows": o["rows"]} for o in ablation],
              "losses": {"vae": ctx["vae_hist"], "base": ctx["base_out"]["losses"]},
              "base_train_s": ctx["base_out"]["train_s"], "shared_s": ctx["shared_s"],
              "shared_from_cache": ctx["cached"], "plot": os.path.relpath(plot, ROOT),
              "sheet": os.path.join(work, "samples.png"), "sheet_rows": [f"control ({z.controls[0]})"] + list(sheets),
              "wall_s": time.time() - t_start, "torch": torch.__version__, "threads": args.threads}
    write_results(result, args.quick)
    return result


def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def write_results(result: dict, quick: bool) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    stem = os.path.join(RESULTS, "toy_experiment" + ("_quick" if quick else ""))
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    j, h = result["judges"], result["headline"]
    n = len(result["seeds"])
    lines = [f"# Realiz3D toy experiment{' (quick)' if quick else ''}", "",
             f"Seeds {result['seeds']} (mean +- std over them), Realiz3D recipe '{result['variant']}'. Classifier "
             f"held-out accuracy {j['classifier_heldout_accuracy']:.3f}; segmenter held-out IoU real "
             f"{j['segmenter_heldout_iou_real']:.3f}, synthetic {j['segmenter_heldout_iou_synthetic']:.3f}. Wall time "
             f"{result['wall_s'] / 60:.1f} min (shared stage {'cached' if result['shared_from_cache'] else 'trained'}"
             f", {result['shared_s'] / 60:.1f} min when trained).", "",
             f"Headline: standard fine-tuning's best IoU {h['baseline_best_iou']:.3f} ({h['baseline_best_label']}, "
             f"realism {_fmt(h['baseline_realism_at_best_iou'])}); Realiz3D's best realism at IoU >= that: "
             f"{_fmt(h['realiz3d_realism_at_baseline_best_iou'])} (within {h['tolerance']} IoU: "
             f"{_fmt(h['realiz3d_realism_within_tolerance'])}); Realiz3D's best IoU {h['realiz3d_best_iou']:.3f}.", "",
             "Where each front is above the other (IoU interval: leader, largest realism gap): " + "; ".join(
                 f"({x['lo']:.3f}, {x['hi']:.3f}]: {dict(A='Realiz3D', B='standard', tie='tie')[x['leader']]}"
                 f" {x['gap']:.3f}" for x in sweep.leads(result["fronts"]["A"], result["fronts"]["B"])) + ".", "",
             f"![fronts]({os.path.basename(result['plot'])})", "",
             "| method | knob | realism P(real) | IoU with control | share judged real | on front |", "|---|---|---|---|---|---|"]
    fronts = result["fronts"]
    for r in result["references"]:
        lines.append(f"| reference | {r['label']} | {r['realism']:.3f} | {r['iou']:.3f} | {r['real_share']:.2f} | |")
    for r in result["diagnostics"]:
        lines.append(f"| diagnostic | {r['label']} (seed {r.get('seed')}) | {r['realism']:.3f} | {r['iou']:.3f} | {r['real_share']:.2f} | |")
    for m, name in (("A", "A Realiz3D"), ("B", "B standard fine-tuning")):
        on = set(fronts[f"{m}_front"])
        for r in fronts[m]:
            pm = (lambda k: f"{r[k]:.3f} +- {r[k + '_std']:.3f}") if n > 1 else (lambda k: f"{r[k]:.3f}")
            lines.append(f"| {name} | {r['label']} | {pm('realism')} | {pm('iou')} | {r['real_share']:.2f} | "
                         f"{'yes' if r['label'] in on else ''} |")
    if result["ablation"]:
        lines += ["", f"Recipe variants of Realiz3D (seed {result['seeds'][0]} only, B of the same seed):", "",
                  "| variant | recipe | A best IoU | B best IoU | A realism at B's best IoU | within 0.01 | train s |",
                  "|---|---|---|---|---|---|---|"]
        for a in result["ablation"]:
            hh = a["headline"]
            lines.append(f"| {a['variant']} | {a['recipe']} | {hh['realiz3d_best_iou']:.3f} | "
                         f"{hh['baseline_best_iou']:.3f} | {_fmt(hh['realiz3d_realism_at_baseline_best_iou'])} | "
                         f"{_fmt(hh['realiz3d_realism_within_tolerance'])} | {a['train_s']:.0f} |")
    lines += ["", "Training time per run (s): " + "; ".join(
        f"{r['method']}{'/' + r['variant'] if r.get('variant') else ''} seed {r['seed']} {r['train_s']:.0f}"
        for r in result["runs"]) + f"; base {result['base_train_s']:.0f}.",
        f"Contact sheet rows ({result['sheet']}): " + "; ".join(result["sheet_rows"]) + "."]
    text = "\n".join(lines) + "\n"
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
