"""Realism-vs-control fronts: the sampling knobs of each method, the Pareto front of a set of
(IoU, realism) points, their mean and spread over training seeds, and a plot.

A knob is one sampling setting of a trained model:
- Realiz3D (method A): its inference domain schedule (real; layer-aware for each k over the
  blocks; step-switch over several fractions; layer-aware during the first steps only, then
  real), a few of them with the control LoRA scaled up;
- standard fine-tuning (method B): its own knobs, the control LoRA's scale (0 = no control)
  and the guidance-embedding value, and the target LoRA's scale.

The scales are applied by :func:`lora_scale` to the attached peft adapters for the time of one
sampling sweep (the library samples adapters at their trained scale: engine.lora.apply_linear
multiplies by ``module.scaling[name]``), so no library file changes.

Every trained model is reused for all its knobs; only sampling is repeated.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Knob:
    """One sampling setting. schedule: make_schedule parameters (A) or None (B: no shifters);
    first_steps: custom schedule 'layer-aware k=first_k during the first first_steps of the
    steps, real after' (A)."""
    method: str
    label: str
    schedule: Optional[tuple] = None           # (preset, k_layers, switch_fraction)
    first_k: int = 0
    first_fraction: float = 0.0
    control_scale: float = 1.0
    target_scale: float = 1.0
    guidance: Optional[float] = None           # None: the training value

    def as_dict(self) -> dict:
        return asdict(self)


def realiz3d_grid(num_blocks: int, quick: bool = False) -> list[Knob]:
    """Method A's knobs over a model of ``num_blocks`` engine blocks."""
    A = "A"
    knobs = [Knob(A, "real", ("real", 0, 0.0)), Knob(A, "synthetic", ("synthetic", 0, 0.0))]
    ks = range(1, num_blocks) if not quick else sorted({1, num_blocks // 2})
    knobs += [Knob(A, f"layer-aware k={k}", ("layer-aware", k, 0.0)) for k in ks]
    fs = (0.1, 0.2, 0.35) if not quick else (0.25,)
    knobs += [Knob(A, f"step-switch f={f:g}", ("step-switch", 0, f)) for f in fs]
    if not quick:
        for k, f in ((2, 0.5),):
            knobs.append(Knob(A, f"layer-aware k={k} for f<{f:g}, then real", ("custom", 0, 0.0), k, f))
        knobs += [Knob(A, "real, control x1.5", ("real", 0, 0.0), control_scale=1.5)]
    else:
        knobs.append(Knob(A, "layer-aware k=1 for f<0.5, then real", ("custom", 0, 0.0), 1, 0.5))
        knobs.append(Knob(A, "real, control x1.5", ("real", 0, 0.0), control_scale=1.5))
    return knobs


def baseline_grid(quick: bool = False) -> list[Knob]:
    """Method B's knobs: control LoRA scale, guidance, target LoRA scale."""
    B = "B"
    scales = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5) if not quick else (0.0, 0.5, 1.0)
    knobs = [Knob(B, f"control x{s:g}", control_scale=s) for s in scales]
    if not quick:
        knobs += [Knob(B, "control x1, guidance 2", guidance=2.0)]
    else:
        knobs.append(Knob(B, "control x1, guidance 2", guidance=2.0))
    return knobs


def schedule_of(knob: Knob, num_blocks: int, num_steps: int):
    """The DomainSchedule of an A knob (None for B)."""
    from realiz3d.adapters import make_schedule
    if knob.schedule is None:
        return None
    preset, k, f = knob.schedule
    if preset != "custom":
        return make_schedule(preset, k_layers=k, switch_fraction=f, num_blocks=num_blocks)
    rows = [["synthetic" if (b < knob.first_k and s < knob.first_fraction * num_steps) else "real"
             for b in range(num_blocks)] for s in range(num_steps)]
    return make_schedule("custom", grid_json=json.dumps(rows), num_blocks=num_blocks, num_steps=num_steps)


@contextlib.contextmanager
def lora_scale(transformer, adapters, scale: float):
    """Multiply the named peft adapters' scaling by ``scale`` while the block runs (restored after)."""
    from realiz3d.engine.lora import LoraLayer
    saved = []
    if scale != 1.0 and adapters:
        for m in transformer.modules():
            if LoraLayer and isinstance(m, LoraLayer):
                for name in adapters:
                    if name in m.scaling:
                        saved.append((m, name, m.scaling[name]))
                        m.scaling[name] = m.scaling[name] * scale
    try:
        yield
    finally:
        for m, name, value in saved:
            m.scaling[name] = value


# ---------------------------------------------------------------------------------------- fronts
def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (maximise both coordinates), sorted by the first.
    A point is dominated when another is >= in both and > in one; exact ties are all kept."""
    keep = []
    for i, (x, y) in enumerate(points):
        if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            keep.append(i)
    return sorted(keep, key=lambda i: (points[i][0], -points[i][1]))


def aggregate(per_seed: dict) -> list[dict]:
    """per_seed {seed: [{label, iou, realism, ...}]} -> one row per label (in first-seen order)
    with the mean and the spread (population std; 0 with one seed) over the seeds that have it."""
    order, by = [], {}
    for seed, rows in sorted(per_seed.items()):
        for r in rows:
            if r["label"] not in by:
                order.append(r["label"])
                by[r["label"]] = []
            by[r["label"]].append(r)
    out = []
    for label in order:
        rs = by[label]
        row = {"label": label, "method": rs[0].get("method"), "seeds": len(rs)}
        for key in ("iou", "realism", "real_share"):
            vals = np.array([r[key] for r in rs if key in r], dtype=float)
            if len(vals):
                row[key], row[key + "_std"] = float(vals.mean()), float(vals.std())
        out.append(row)
    return out


def front(rows: list[dict]) -> list[dict]:
    """The Pareto front (IoU, realism) of aggregated rows, by IoU."""
    idx = pareto([(r["iou"], r["realism"]) for r in rows])
    return [rows[i] for i in idx]


def realism_at(rows: list[dict], iou: float) -> Optional[float]:
    """The best realism among ``rows`` with IoU >= ``iou`` (None when none reaches it)."""
    vals = [r["realism"] for r in rows if r["iou"] >= iou]
    return max(vals) if vals else None


def compare(a_rows: list[dict], b_rows: list[dict], tolerance: float = 0.01) -> dict:
    """The headline numbers: B's best IoU, B's and A's best realism at that IoU (exact, and
    within ``tolerance`` of it), A's best IoU."""
    b_best = max(b_rows, key=lambda r: (r["iou"], r["realism"]))
    x = b_best["iou"]
    return {"baseline_best_iou": x, "baseline_best_label": b_best["label"],
            "baseline_realism_at_best_iou": realism_at(b_rows, x),
            "realiz3d_realism_at_baseline_best_iou": realism_at(a_rows, x),
            "realiz3d_realism_within_tolerance": realism_at(a_rows, x - tolerance), "tolerance": tolerance,
            "realiz3d_best_iou": max(r["iou"] for r in a_rows)}


def leads(a_rows: list[dict], b_rows: list[dict], tie: float = 0.01) -> list[dict]:
    """Where each method's front is above the other's, over the IoU range both reach: intervals
    (lo, hi] of IoU on which ``realism_at`` of A minus that of B keeps its sign, with the largest
    gap in each. A method that does not reach an IoU counts as realism 0 there (no sample of it
    follows the control that well); gaps of at most ``tie`` are ties. Returns
    [{"lo", "hi", "leader": "A"|"B"|"tie", "gap"}]."""
    xs = sorted({r["iou"] for r in list(a_rows) + list(b_rows)})
    out = []
    for lo, hi in zip(xs, xs[1:]):
        a, b = realism_at(a_rows, hi) or 0.0, realism_at(b_rows, hi) or 0.0
        leader = "A" if a - b > tie else "B" if b - a > tie else "tie"
        if out and out[-1]["leader"] == leader:
            out[-1].update(hi=hi, gap=max(out[-1]["gap"], abs(a - b)))
        else:
            out.append({"lo": lo, "hi": hi, "leader": leader, "gap": abs(a - b)})
    return out


# ----------------------------------------------------------------------------------------- plot
COLORS = {"A": (31, 100, 200), "B": (210, 60, 40), "ref": (90, 90, 90)}


def staircase(points: list[tuple]) -> list[tuple]:
    """The polyline of a Pareto front's (iou, realism) points as what it claims: the best realism
    reached at IoU >= x, a step down at each point's IoU (a straight line between two points
    would draw knobs that were never sampled)."""
    pts = sorted(points)
    out = pts[:1]
    for (xa, _), (xb, yb) in zip(pts, pts[1:]):
        out += [(xa, yb), (xb, yb)]
    return out


def plot_fronts(path: str, a_rows: list[dict], b_rows: list[dict], refs: list[dict] = (), title: str = "",
                size: tuple = (640, 480)) -> str:
    """A scatter of every knob (mean over seeds, with +-std crosses), both Pareto fronts as
    staircases (``staircase``), reference points in grey; x = IoU with the control, y = realism. PIL only (the venv
    has no matplotlib). Returns ``path``."""
    from PIL import Image, ImageDraw, ImageFont
    W, H = size
    left, right, top, bottom = 60, 20, 30, 50
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    allx = [r["iou"] for r in list(a_rows) + list(b_rows) + list(refs)]
    x0 = max(0.0, math.floor(min(allx) * 10) / 10 - 0.05) if allx else 0.0
    x1 = min(1.0, math.ceil(max(allx) * 10) / 10 + 0.0) if allx else 1.0
    if x1 <= x0:
        x0, x1 = 0.0, 1.0

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (W - left - right), top + (1 - y) * (H - top - bottom))

    d.rectangle([left, top, W - right, H - bottom], outline=(0, 0, 0))
    for i in range(11):                                   # realism ticks
        y = i / 10
        _, py = px(x0, y)
        d.line([left - 4, py, left, py], fill=(0, 0, 0))
        d.line([left, py, W - right, py], fill=(235, 235, 235))
        d.text((left - 30, py - 5), f"{y:.1f}", fill=(0, 0, 0), font=font)
    n = int(round((x1 - x0) / 0.05))
    for i in range(n + 1):                                # IoU ticks every 0.05
        x = x0 + i * 0.05
        qx, _ = px(x, 0)
        d.line([qx, H - bottom, qx, H - bottom + 4], fill=(0, 0, 0))
        if i % 2 == 0:
            d.text((qx - 10, H - bottom + 6), f"{x:.2f}", fill=(0, 0, 0), font=font)
    d.text((W // 2 - 60, H - 20), "IoU with the control (higher: follows it)", fill=(0, 0, 0), font=font)
    d.text((5, 8), "realism P(real)", fill=(0, 0, 0), font=font)
    if title:
        d.text((left + 120, 8), title, fill=(0, 0, 0), font=font)
    for key, rows in (("A", a_rows), ("B", b_rows)):
        c = COLORS[key]
        pts = [px(x, y) for x, y in staircase([(r["iou"], r["realism"]) for r in front(list(rows))])] if rows else []
        if len(pts) > 1:
            d.line(pts, fill=c, width=2)
        for r in rows:
            qx, qy = px(r["iou"], r["realism"])
            sx = r.get("iou_std", 0) / (x1 - x0) * (W - left - right)
            sy = r.get("realism_std", 0) * (H - top - bottom)
            d.line([qx - sx, qy, qx + sx, qy], fill=c)
            d.line([qx, qy - sy, qx, qy + sy], fill=c)
            if key == "A":
                d.ellipse([qx - 3, qy - 3, qx + 3, qy + 3], fill=c)
            else:
                d.rectangle([qx - 3, qy - 3, qx + 3, qy + 3], fill=c)
    for r in refs:
        qx, qy = px(r["iou"], r["realism"])
        d.polygon([(qx, qy - 5), (qx - 4, qy + 3), (qx + 4, qy + 3)], fill=COLORS["ref"])
        d.text((qx + 6, qy - 6), r["label"], fill=COLORS["ref"], font=font)
    lx, ly = W - right - 230, top + 8
    d.rectangle([lx - 6, ly - 4, W - right - 4, ly + 34], fill="white", outline=(200, 200, 200))
    d.ellipse([lx, ly + 2, lx + 6, ly + 8], fill=COLORS["A"])
    d.text((lx + 12, ly), "A Realiz3D (domain schedules)", fill=COLORS["A"], font=font)
    d.rectangle([lx, ly + 18, lx + 6, ly + 24], fill=COLORS["B"])
    d.text((lx + 12, ly + 16), "B standard fine-tuning (scales)", fill=COLORS["B"], font=font)
    img.save(path, optimize=True)
    return path
