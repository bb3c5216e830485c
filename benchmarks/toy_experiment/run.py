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
import metrics  # noqa: E402
import recipes  # noqa: E402
import toy_model  # noqa: E402
import toy_vae  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")


@dataclass
class Sizes:
    """Every size of the run; --quick shrinks them all for a smoke run of a few minutes."""
    size: int = 32                  # image side, px
    n_real: int = 2000              # training images per domain
    n_synthetic: int = 1500
    n_test: int = 300               # held-out images per domain (classifier / segmenter checks)
    n_eval: int = 48                # held-out control maps sampled by every method
    vae_steps: int = 1200
    classifier_steps: int = 400
    segmenter_steps: int = 1500
    base_steps: int = 2500          # real-domain pretraining of the base model
    stage1_steps: int = 400         # A: domain shifters
    stage2_steps: int = 1200        # A: control + target LoRAs with reassignment
    baseline_steps: int = 1600      # B: = stage1_steps + stage2_steps (equal budget)
    batch: int = 32
    sample_steps: int = 20
    guidance: float = 1.0           # the guidance-embedding value used in training and sampling
    tau_b: int = 3                  # Realiz3D's tau_B: up to this many leading blocks reassigned
    k_layers: int = 2               # layer-aware sampling schedule: synthetic in blocks < k_layers
    lora_rank: int = 16
    shifter_rank: int = 8
    base_lr: float = 5e-4           # full fine-tuning of the base
    shifter_lr: float = 2e-3        # stage 1
    lora_lr: float = 1e-3           # stage 2 and the baseline (control + target LoRAs)
    controls: tuple = ("normal",)


QUICK = dict(n_real=300, n_synthetic=300, n_test=100, n_eval=8, vae_steps=300, classifier_steps=100,
             segmenter_steps=300, base_steps=200, stage1_steps=40, stage2_steps=80, baseline_steps=120, batch=16,
             sample_steps=8)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_data(z: Sizes, work: str) -> dict:
    log("generating toy domains")
    d = {"real": data.make_split("real", z.n_real, z.size, seed=1),
         "synthetic": data.make_split("synthetic", z.n_synthetic, z.size, seed=2),
         "real_test": data.make_split("real", z.n_test, z.size, seed=101),
         "synthetic_test": data.make_split("synthetic", z.n_test, z.size, seed=102),
         "eval": data.make_split("synthetic", z.n_eval, z.size, seed=103)}
    data.write_folder(d["real"], os.path.join(work, "data", "real"), controls=())
    data.write_folder(d["synthetic"], os.path.join(work, "data", "synthetic"), controls=z.controls)
    for name in ("real", "synthetic"):
        data.contact_sheet(d[name]["image"][:32], os.path.join(work, f"data_{name}.png"), scale=3)
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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of a few minutes")
    ap.add_argument("--work", default=None,
                    help="working folder (data, weights, sheets); default /tmp/realiz3d_toy[_quick]")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--base-loop", choices=("library", "own"), default="library",
                    help="pretrain the base with the training library (stage 2, baseline, full fine-tuning, real "
                         "images only) or with toy_model.pretrain (plain loop, for comparison)")
    args = ap.parse_args(argv)
    z = Sizes(**(QUICK if args.quick else {}))
    work = args.work or ("/tmp/realiz3d_toy_quick" if args.quick else "/tmp/realiz3d_toy")
    os.makedirs(work, exist_ok=True)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    d = make_data(z, work)

    # VAE, then the judges, trained on round trips of the training splits
    imgs = np.concatenate([d["real"]["image"], d["synthetic"]["image"]] + [d["synthetic"][k] for k in z.controls])
    (vae, vae_hist), vae_s = evaluate.timed(toy_vae.train_vae, imgs, z.vae_steps, batch=16, log=log)
    rt = {k: toy_vae.roundtrip(vae, d[k]["image"]) for k in ("real", "synthetic", "real_test", "synthetic_test")}
    data.contact_sheet(np.concatenate([d["real_test"]["image"][:8], rt["real_test"][:8],
                                       d["synthetic_test"]["image"][:8], rt["synthetic_test"][:8]]),
                       os.path.join(work, "vae_roundtrip.png"), scale=3)
    classifier = metrics.train_classifier(rt["real"], rt["synthetic"], z.classifier_steps, log=log)
    segmenter = metrics.train_segmenter(np.concatenate([rt["real"], rt["synthetic"]]),
                                        np.concatenate([d["real"]["mask"], d["synthetic"]["mask"]]),
                                        z.segmenter_steps, log=log)
    p_real = metrics.real_probability(classifier, rt["real_test"])
    p_syn = metrics.real_probability(classifier, rt["synthetic_test"])
    judges = {"classifier_heldout_accuracy": float(((p_real > 0.5).sum() + (p_syn <= 0.5).sum()) / (2 * z.n_test)),
              "segmenter_heldout_iou_real": float(metrics.iou(metrics.segment(segmenter, rt["real_test"]),
                                                              d["real_test"]["mask"]).mean()),
              "segmenter_heldout_iou_synthetic": float(metrics.iou(metrics.segment(segmenter, rt["synthetic_test"]),
                                                                   d["synthetic_test"]["mask"]).mean()),
              "vae_final_mse": vae_hist[-1][1], "vae_train_s": vae_s}
    log(f"judges: {judges}")

    # the base model, pretrained on real images
    pipe = toy_model.build_pipeline(vae, tokenizer_dir=os.path.join(work, "tokenizer"))
    if args.base_loop == "library":
        base_out = recipes.pretrain_base(pipe, d, z, work, log)
    else:
        t0 = time.time()
        hist = toy_model.pretrain(pipe, toy_model.encode_latents(pipe, d["real"]["image"]), z.size, z.base_steps,
                                  batch=z.batch, lr=2 * z.base_lr, guidance=z.guidance, log=log, prompt=data.CAPTION)
        base_out = {"losses": hist, "train_s": time.time() - t0}
    base_state = base_weights(pipe.transformer)

    eval_controls = controls_of(d["eval"], z.controls)
    eval_masks = d["eval"]["mask"]
    rows, sheets = [], {}

    def add_row(method, images, masks, train_s, note=""):
        r = {"method": method, **evaluate.score(images, masks, classifier, segmenter), "train_s": train_s,
             "note": note}
        rows.append(r)
        sheets[method] = images[:16]
        log(f"row: {r}")

    add_row("held-out real images (VAE round trip)", rt["real_test"][:z.n_eval], d["real_test"]["mask"][:z.n_eval],
            None, "reference: IoU of the segmenter with the true masks")
    add_row("held-out synthetic renders (VAE round trip)", rt["synthetic_test"][:z.n_eval],
            d["synthetic_test"]["mask"][:z.n_eval], None, "reference")
    gen = dict(count=z.n_eval, size=z.size, steps=z.sample_steps, guidance=z.guidance)
    add_row("base model, no control", evaluate.sample_set(pipe, data.CAPTION, None, **gen), eval_masks,
            base_out["train_s"], "IoU against the eval masks = chance level")

    # A: Realiz3D. Between its stages: what the stage-1 shifters alone do to the base (no control)
    def shifters_alone(shifters, seconds):
        from realiz3d.adapters import make_schedule
        for preset in ("real", "synthetic"):
            imgs = evaluate.sample_set(pipe, data.CAPTION, None, shifters=shifters, schedule=make_schedule(preset),
                                       **gen)
            add_row(f"base + stage-1 shifters, no control, schedule {preset}", imgs, eval_masks, seconds,
                    "diagnostic: IoU against the eval masks = chance level")

    a = recipes.train_realiz3d(pipe, z, work, log, after_stage1=shifters_alone)
    for label, schedule in a["schedules"].items():
        imgs_a = evaluate.sample_set(pipe, data.CAPTION, eval_controls, control_adapters=a["adapters"],
                                     target_adapters=a["target_adapters"],
                                     shifters=a["shifters"], schedule=schedule, **gen)
        add_row(f"A Realiz3D, schedule {label}", imgs_a, eval_masks, a["train_s"], a.get("note", ""))
    recipes.detach(pipe, a)

    # B: standard fine-tuning, from the same base weights (LoRA training leaves them as they were)
    check_same_base(pipe.transformer, base_state)
    b = recipes.train_baseline(pipe, z, work, log)
    imgs_b = evaluate.sample_set(pipe, data.CAPTION, eval_controls, control_adapters=b["adapters"],
                                 target_adapters=b["target_adapters"], **gen)
    add_row("B standard fine-tuning", imgs_b, eval_masks, b["train_s"], b.get("note", ""))

    cols = min(16, z.n_eval)          # one row per method, the control maps first
    sheet_rows = [eval_controls[:cols, 0]] + [v[:cols] for v in sheets.values()]
    data.contact_sheet(np.concatenate(sheet_rows), os.path.join(work, "samples.png"), cols=cols, scale=3)
    result = {"sizes": asdict(z), "quick": args.quick, "judges": judges, "rows": rows,
              "losses": {"vae": vae_hist, "base": base_out["losses"], "A": a["losses"], "B": b["losses"]},
              "sheet": os.path.join(work, "samples.png"),
              "sheet_rows": [f"control ({z.controls[0]})"] + list(sheets), "wall_s": time.time() - t_start,
              "torch": torch.__version__, "threads": args.threads}
    write_results(result, args.quick)
    return result


def write_results(result: dict, quick: bool) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    stem = os.path.join(RESULTS, "toy_experiment" + ("_quick" if quick else ""))
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
    j = result["judges"]
    lines = [f"# Realiz3D toy experiment{' (quick)' if quick else ''}", "",
             f"Classifier held-out accuracy {j['classifier_heldout_accuracy']:.3f}; segmenter held-out IoU "
             f"real {j['segmenter_heldout_iou_real']:.3f}, synthetic {j['segmenter_heldout_iou_synthetic']:.3f}. "
             f"Wall time {result['wall_s'] / 60:.1f} min.", "",
             "| method | realism P(real) | share judged real | IoU with control | train time (s) |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        t = "-" if r["train_s"] is None else f"{r['train_s']:.0f}"
        lines.append(f"| {r['method']} | {r['realism']:.3f} | {r['real_share']:.2f} | {r['iou']:.3f} | {t} |")
    L = result["losses"]
    last = lambda h: f"{h[-1][1]:.3f}" if h else "-"
    lines += ["", f"Final training losses (mean of the last logged window): base {last(L['base'])}, A stage 1 "
                  f"{last(L['A']['stage1'])}, A stage 2 {last(L['A']['stage2'])}, B {last(L['B'])}.",
              f"Contact sheet rows ({result['sheet']}): " + "; ".join(result["sheet_rows"]) + "."]
    text = "\n".join(lines) + "\n"
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
