"""Device memory a training step needs, estimated from the model layout and the config alone
(a pure function: no model, no device), and the check made before the first step.

    est = training_memory({"num_double": 19, "num_single": 38, "hidden": 3072}, cfg, weight_bytes=1)
    est.total, est.parts      # bytes; {"weights", "trainables", "gradients", "optimizer", "activations"}

Parts:
- weights: every base parameter at ``weight_bytes`` each (1 for fp8, 2 for bf16), plus one
  layer cast to the compute dtype at a time (fp8 is computed in bf16).
- trainables (fp32), their gradients (fp32) and the optimizer state (AdamW: 2 fp32 tensors per
  trained tensor; Prodigy: 4). Full fine-tuning trains every base weight in ``model.dtype``.
- activations, in units of one hidden state over all tokens (tokens x hidden x the compute
  dtype's size). Without checkpointing every block keeps what autograd saved for its backward
  (:data:`SAVED_UNITS`) and the backward of the last block adds its transients on top; with
  checkpointing every block keeps only its input (1 unit) and one block at a time is recomputed
  and run backward (:data:`PEAK_UNITS`: that block's whole forward + backward peak). Measured by
  benchmarks/memory.py --training: one FLUX.1-width block (hidden 3072) at the real token counts,
  forward + backward with the LoRAs trained, on the CPU in fp32 (torch.profiler's live memory and
  the saved-tensor hooks' bytes), the units then taken for bf16 too. RefAny3D's group mask gathers
  keys and values per query group, so it keeps more per token than a full-attention layout.
- a margin for the allocator and the CUDA context (:data:`OVERHEAD`).
Budgets are GiB (a "24 GB" card has 24 GiB).
"""
from __future__ import annotations

from dataclasses import dataclass, field

GiB = 1024 ** 3
#: what one block saves for its backward, per layout, in hidden-state units. "full" (one attention
#: over all branches): measured, stage 2 with two rank-16 LoRAs at 512 px (2560 tokens).
#: "refany3d": its single block measured with 2 views of 512 px (6656 tokens: saved 19.3, peak
#: 28.1), its extra over full attention (8.8 units: keys and values gathered per query group, 2.4x
#: the tokens at 2 views) scaled to 8 views (2.95x: x 1.39), and the same extra put on the double
#: block, whose 8-view run exceeded the measuring host's memory (an extrapolation, not a measurement)
SAVED_UNITS = {"full": {"double": 14.3, "single": 10.5}, "refany3d": {"double": 26.6, "single": 22.8}}
#: one block's forward + backward peak (its saved tensors included), same measurements
PEAK_UNITS = {"full": 23.4, "refany3d": 31.6}
#: the output layer, the loss and its gradient
TRANSIENT_UNITS = 2.0
#: the CUDA context, allocator fragmentation and the host's reserve
OVERHEAD = int(1.5 * GiB)
MLP_RATIO = 4
IN_CHANNELS, TEXT_DIM, POOLED_DIM, TIME_DIM = 64, 4096, 768, 256


def base_parameters(layout: dict) -> int:
    """Parameters of a FLUX.1-family transformer of this layout (weights and biases)."""
    d, nd, ns = layout["hidden"], layout["num_double"], layout["num_single"]
    m, hd = layout.get("mlp", MLP_RATIO * d), layout.get("head_dim", 128)
    lin = lambda i, o: i * o + o  # noqa: E731
    double = 2 * (lin(d, 6 * d) + lin(d, 3 * d) + lin(d, d) + lin(d, m) + lin(m, d)) + 4 * hd   # + q/k norm scales
    single = lin(d, 3 * d) + lin(d, 3 * d + m) + lin(d + m, d) + 2 * hd
    top = (lin(IN_CHANNELS, d) + lin(TEXT_DIM, d) + 2 * (lin(TIME_DIM, d) + lin(d, d)) + lin(POOLED_DIM, d)
           + lin(d, d) + lin(d, 2 * d) + lin(d, IN_CHANNELS))
    return nd * double + ns * single + top


def lora_parameters(layout: dict, rank: int) -> int:
    """One adapter of rank ``rank`` on SPEC section 2's modules (x_embedder; double blocks
    norm1.linear, to_q/k/v, to_out.0, ff.net.2; single blocks norm.linear, proj_mlp, proj_out,
    to_q/k/v)."""
    d, nd, ns = layout["hidden"], layout["num_double"], layout["num_single"]
    m = layout.get("mlp", MLP_RATIO * d)
    pair = lambda i, o: rank * (i + o)  # noqa: E731
    double = pair(d, 6 * d) + 3 * pair(d, d) + pair(d, d) + pair(m, d)
    single = pair(d, 3 * d) + pair(d, m) + pair(d + m, d) + 3 * pair(d, d)
    return pair(IN_CHANNELS, d) + nd * double + ns * single


def shifter_parameters(layout: dict, rank: int, embed_dim: int, domains: int = 2) -> int:
    blocks = layout["num_double"] + layout["num_single"]
    return blocks * (domains * embed_dim + embed_dim * rank + rank * layout["hidden"] + layout["hidden"])


def branch_tokens(cfg, n_views: int = None, condition_size: int = None) -> list[int]:
    """Token counts of a sample's branches: text, target(s), conditions (the largest plan)."""
    text = cfg.train.max_sequence_length
    target = (cfg.data.size // 16) ** 2
    if cfg.recipe == "refany3d":
        v = cfg.refany3d.n_views if n_views is None else n_views
        c = cfg.refany3d.condition_size if condition_size is None else condition_size
        return [text, target, target] + [(c // 16) ** 2] * (2 * v)
    if cfg.recipe == "stage2":
        return [text, target] + [target] * len(cfg.data.controls)
    return [text, target]


@dataclass
class MemoryEstimate:
    parts: dict = field(default_factory=dict)
    tokens: int = 0

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    def describe(self) -> str:
        return ", ".join(f"{k} {v / GiB:.1f}" for k, v in self.parts.items()) + f" (GiB; {self.tokens} tokens)"


def training_memory(layout: dict, cfg, weight_bytes: float = 2, compute_bytes: int = 2, n_views: int = None,
                    condition_size: int = None, checkpointing: bool = None) -> MemoryEstimate:
    """Device bytes of one training step of ``cfg`` (a TrainConfig) on a model of ``layout``
    ({"num_double", "num_single", "hidden"[, "mlp"]}); weight_bytes: per base parameter on the
    device (0: weights not counted, e.g. streamed or already resident); compute_bytes: the
    activation dtype's size (2 for bf16)."""
    d = layout["hidden"]
    base = base_parameters(layout)
    optimizer_states = 4 if cfg.train.optimizer == "prodigy" else 2
    full = cfg.recipe == "stage2" and cfg.stage2.full_finetune
    if cfg.recipe == "stage1":
        trained = shifter_parameters(layout, cfg.shifters.rank, cfg.shifters.embed_dim)
    elif full:
        trained = base
    else:
        trained = 2 * lora_parameters(layout, cfg.lora.rank)
        if cfg.recipe == "refany3d":
            trained += 2 * 256 + 256 * d + d + d * d + d
    trained_bytes = {"fp32": 4, "bf16": 2, "fp16": 2}[cfg.model.dtype] if full else 4
    parts = {"weights": 0 if full else base * weight_bytes}
    if weight_bytes and weight_bytes < compute_bytes and not full:      # one fp8 layer cast at a time
        parts["weights"] += d * (3 * d + layout.get("mlp", MLP_RATIO * d)) * compute_bytes
    parts["trainables"] = trained * trained_bytes
    parts["gradients"] = trained * trained_bytes
    parts["optimizer"] = trained * trained_bytes * optimizer_states
    tokens = sum(branch_tokens(cfg, n_views, condition_size)) * cfg.train.batch_size
    ckpt = cfg.train.gradient_checkpointing if checkpointing is None else checkpointing
    per = tokens * d * compute_bytes
    nd, ns = layout["num_double"], layout["num_single"]
    kind = "refany3d" if cfg.recipe == "refany3d" else "full"
    saved, peak = SAVED_UNITS[kind], PEAK_UNITS[kind]
    if ckpt:
        units = (nd + ns) + peak
    else:
        units = nd * saved["double"] + ns * saved["single"] + peak - min(saved.values())
    parts["activations"] = int((units + TRANSIENT_UNITS) * per)
    parts["overhead"] = OVERHEAD
    return MemoryEstimate({k: int(v) for k, v in parts.items()}, tokens)


def fitting_options(layout: dict, cfg, budget: int, **kw) -> list[str]:
    """What would fit ``budget`` bytes when ``cfg`` does not: fewer views or a smaller condition
    size (RefAny3D), gradient checkpointing, a smaller batch."""
    out = []
    if not cfg.train.gradient_checkpointing and training_memory(layout, cfg, checkpointing=True, **kw).total <= budget:
        out.append("turn on gradient checkpointing")
    if cfg.recipe == "refany3d":
        for v in range(cfg.refany3d.n_views - 1, 0, -1):
            if training_memory(layout, cfg, n_views=v, checkpointing=True, **kw).total <= budget:
                out.append(f"{v} views (refany3d.n_views / views)")
                break
        for c in range(cfg.refany3d.condition_size - 64, 63, -64):
            if training_memory(layout, cfg, condition_size=c, checkpointing=True, **kw).total <= budget:
                out.append(f"condition size {c} (refany3d.condition_size)")
                break
    if cfg.train.batch_size > 1:
        out.append("batch size 1")
    return out


def check_fits(layout: dict, cfg, free_bytes: int, resident_weight_bytes: int, weight_bytes: float,
               log=None, compute_bytes: int = 2) -> MemoryEstimate:
    """InputError naming ``memory`` (before the first step) when the estimate, less the base
    weights already on the device, exceeds ``free_bytes``; the message gives the estimate's parts
    and what would fit. ``train.memory_check: warn`` logs instead; ``off`` skips."""
    from ..renderers.errors import InputError

    est = training_memory(layout, cfg, weight_bytes, compute_bytes)
    need = est.total - resident_weight_bytes
    if cfg.train.memory_check == "off" or need <= free_bytes:
        return est
    budget = free_bytes + resident_weight_bytes
    options = fitting_options(layout, cfg, budget, weight_bytes=weight_bytes, compute_bytes=compute_bytes)
    msg = (f"this run needs about {need / GiB:.1f} GiB more device memory, the device has {free_bytes / GiB:.1f} "
           f"GiB free (estimate: {est.describe()}). "
           + (f"What would fit: {'; '.join(options)}." if options else
              "Use fp8 weights, LoRAs instead of full fine-tuning, a smaller size, or a larger GPU.")
           + " (train.memory_check: warn trains anyway.)")
    if cfg.train.memory_check == "warn":
        if log is not None:
            log("memory: " + msg)
        return est
    raise InputError("memory", msg)
