"""Training configuration: a YAML file read into a tree of dataclasses, checked key by key.

Every section is a dataclass whose fields are the valid keys, with their defaults. An unknown
key, a value of the wrong type or out of range raises :class:`InputError` naming the dotted key
(``train.lr``) and, for unknown keys, listing the valid ones. Relative paths in a file are
relative to the file's folder; paths given as overrides (``--set``) are relative to the
working directory.
"""
from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..refany3d.lora_targets import LORA_TARGET_MODULES
from ..renderers.errors import InputError

RECIPES = ("stage1", "stage2", "refany3d")
OPTIMIZERS = ("adamw", "prodigy")
PRECISIONS = ("no", "bf16", "fp16")
DTYPES = ("fp32", "bf16", "fp16")
CONTROL_KINDS = ("normal", "points", "depth")
LATENT_MODES = ("sample", "mean")
RESIZE_MODES = ("crop", "error")
BAD_SAMPLE_POLICIES = ("skip", "stop")
RENDER_IMAGES = ("albedo", "lit")
VARIANTS = ("bias", "token")
BACKENDS = ("auto", "pyrender", "pyrender (worker)", "pyrender (in-process)", "raycast")   # renderers.BACKENDS
LORA_INITS = ("auto", "gaussian", "kaiming")
MEMORY_CHECKS = ("error", "warn", "off")
#: SPEC.md section 2: RefAny3D's LoRA targets, the image-stream modules of the blocks (also used for
#: Realiz3D's LoRAs): peft's full-match regex of refany3d/lora_targets.py
LORA_TARGETS = LORA_TARGET_MODULES
#: the reference's Prodigy weight decay: train.weight_decay's default for the refany3d recipe
REFANY3D_WEIGHT_DECAY = 0.01


@dataclass
class ModelConfig:
    """The base Flux model: a diffusers folder, or ComfyUI-style single files."""
    folder: str = ""                  # diffusers folder with model_index.json
    transformer: str = ""             # single files (used when folder is empty)
    vae: str = ""
    clip: str = ""
    t5: str = ""
    clip_tokenizer: str = ""
    t5_tokenizer: str = ""
    dtype: str = "fp32"               # storage dtype of the frozen weights; trained ones stay fp32
    device: str = "auto"              # auto / cuda: accelerate's GPU (CUDA_VISIBLE_DEVICES picks) | cpu


@dataclass
class RenderConfig:
    """Synthetic samples rendered on the fly from ``data.meshes`` (orbit cameras)."""
    views_per_mesh: int = 8           # samples per mesh; sample k of a mesh has its own seeded camera
    elevation: list = field(default_factory=lambda: [-10.0, 40.0])   # degrees, drawn uniformly
    radius: float = 4.0
    fov: float = 45.0                 # vertical, degrees
    image: str = "albedo"             # albedo (unlit) | lit
    backend: str = "auto"


@dataclass
class DataConfig:
    real: str = ""                    # folder of real photos (+ NAME.txt captions)
    synthetic: str = ""               # folder of renders NAME.png + NAME.<control>.png (+ NAME.txt)
    meshes: str = ""                  # folder of meshes rendered on the fly as synthetic samples
    refany3d: str = ""                # folder of RefAny3D triplets NAME.png + NAME.json
    controls: list = field(default_factory=lambda: ["normal"])        # condition branches, in this order
    size: int = 512                   # training resolution (square), a multiple of 16
    resize: str = "crop"              # crop: scale the short side to size, centre-crop | error
    on_bad_sample: str = "stop"       # stop | skip (every skipped path is logged)
    real_ratio: float = 0.5           # probability that a sample is drawn from data.real
    caption: str = ""                 # caption of samples without a NAME.txt
    render: RenderConfig = field(default_factory=RenderConfig)


@dataclass
class TrainSection:
    steps: int = 1000
    batch_size: int = 1               # samples per process and step
    lr: float = 1e-4
    optimizer: str = "adamw"          # adamw | prodigy (needs prodigyopt; use lr 1.0)
    weight_decay: float = 1e-4        # recipe refany3d: 0.01 (the reference's) unless the config sets it
    prodigy_bias_correction: bool = True    # Prodigy's use_bias_correction (the reference's setting)
    prodigy_safeguard_warmup: bool = True   # Prodigy's safeguard_warmup (the reference's setting)
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0             # linear warm-up of the learning rate
    grad_clip: float = 1.0            # max gradient norm; 0 turns clipping off
    precision: str = "no"             # mixed precision through accelerate: no | bf16 | fp16
    gradient_checkpointing: bool = False
    compile: bool = False             # torch.compile the engine's block functions (the layout is fixed per recipe)
    seed: int = 0
    logit_mean: float = 0.0           # timesteps t = sigmoid(N(logit_mean, logit_std))
    logit_std: float = 1.0
    guidance: float = 1.0             # guidance-embedding value of text and targets (conditions: 1.0)
    latents: str = "sample"           # VAE posterior: sample (seeded per step) | mean
    cache_latents: bool = True        # keep each sample's latent distribution after its first encoding
    latent_cache_mb: int = 4096       # bound of those kept latents (CPU RAM, MB); least recently used evicted; 0: none
    text_cache_size: int = 256        # captions whose T5/CLIP embeddings are kept
    cache_dir: str = ""               # folder for encoded captions and latents on disk ("" = none)
    cache_disk_mb: int = 8192         # bound of that folder (MB); least recently used files deleted
    precache: bool = False            # encode every sample before the first step, then release the encoders
    memory_check: str = "error"       # GPU estimate above free memory before the first step: error | warn | off
    max_sequence_length: int = 512    # T5 tokens
    log_every: int = 10


@dataclass
class ShifterSection:
    """Stage 1: the new domain shifters."""
    rank: int = 8
    embed_dim: int = 64
    variant: str = "bias"


@dataclass
class LoraSection:
    rank: int = 16
    alpha: float = 16.0
    # a regex (peft: full match of the module name) or a list of names (peft: exact name or suffix)
    targets: Union[str, list] = LORA_TARGETS
    init: str = "auto"                # auto (refany3d: gaussian, as the reference; else kaiming) | gaussian | kaiming

    def peft_init(self, recipe: str):
        """peft's ``init_lora_weights`` for ``recipe``: "gaussian" (lora_A ~ N(0, 1/rank)) or True
        (peft's default, lora_A kaiming-uniform); lora_B starts at zero either way."""
        gaussian = self.init == "gaussian" or (self.init == "auto" and recipe == "refany3d")
        return "gaussian" if gaussian else True


@dataclass
class Stage2Section:
    shifters: str = ""                # the stage-1 shifter file (frozen)
    tau_b: int = 19                   # real samples: i ~ U{0..tau_b} blocks in domain S, not updated
    full_finetune: bool = False       # train every transformer weight instead of LoRAs
    baseline: bool = False            # standard fine-tuning: no shifters, no reassignment, no freezing


@dataclass
class RefAny3DSection:
    n_views: int = 8
    condition_size: int = 512
    prompt_dropout: float = 0.1
    condition_dropout: float = 0.1    # all condition views black
    text_agnostic: bool = True
    init_from: str = ""               # folder with default.safetensors, coord.safetensors, domain_embedder.*


@dataclass
class CheckpointSection:
    dir: str = ""                     # default: <output.dir>/checkpoints
    every: int = 500                  # steps between checkpoints
    keep: int = 2                     # newest checkpoints kept


@dataclass
class OutputSection:
    dir: str = "realiz3d_training"


@dataclass
class TrainConfig:
    recipe: str = "stage1"            # stage1 | stage2 | refany3d
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSection = field(default_factory=TrainSection)
    shifters: ShifterSection = field(default_factory=ShifterSection)
    lora: LoraSection = field(default_factory=LoraSection)
    stage2: Stage2Section = field(default_factory=Stage2Section)
    refany3d: RefAny3DSection = field(default_factory=RefAny3DSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    output: OutputSection = field(default_factory=OutputSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or os.path.join(self.output.dir, "checkpoints")


PATH_KEYS = ("model.folder", "model.transformer", "model.vae", "model.clip", "model.t5", "model.clip_tokenizer",
             "model.t5_tokenizer", "data.real", "data.synthetic", "data.meshes", "data.refany3d", "stage2.shifters",
             "refany3d.init_from", "checkpoint.dir", "output.dir", "train.cache_dir")


def load_config(source: Union[str, dict, None] = None, overrides: Union[dict, list, None] = None,
                base_dir: Optional[str] = None) -> TrainConfig:
    """A checked :class:`TrainConfig` from a YAML file path or a dict (None: all defaults).

    overrides: {"train.lr": 1e-4, ...} or ["train.lr=1e-4", ...] (values parsed as YAML), applied
    on top of the file. base_dir: what relative paths in a dict are relative to (default: cwd).
    """
    import yaml

    raw: Any = {}
    if isinstance(source, str):
        if not os.path.isfile(source):
            raise InputError("config", f"'{source}' does not exist or is not a file.")
        try:
            with open(source, encoding="utf-8") as f:
                raw = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError("config", f"'{source}' could not be read as YAML ({exc}).") from exc
        base_dir = os.path.dirname(os.path.abspath(source))
    elif isinstance(source, dict):
        raw = _deep_copy(source)
    if not isinstance(raw, dict):
        raise InputError("config", "must be a mapping of sections (recipe, model, data, train, ...).")
    _resolve_paths(raw, base_dir or os.getcwd())
    for key, value in _parse_overrides(overrides).items():
        if key in PATH_KEYS and isinstance(value, str) and value:
            value = os.path.abspath(value)
        _set_dotted(raw, key, value)
    _recipe_defaults(raw)
    cfg = _build(TrainConfig, raw, "")
    validate(cfg)
    return cfg


def _recipe_defaults(raw: dict) -> None:
    """Defaults that depend on the recipe, filled in where the config leaves the key out."""
    train = raw.get("train")
    if raw.get("recipe") == "refany3d" and (train is None or isinstance(train, dict)):
        train = raw["train"] = train or {}
        train.setdefault("weight_decay", REFANY3D_WEIGHT_DECAY)


def _deep_copy(d):
    return {k: _deep_copy(v) for k, v in d.items()} if isinstance(d, dict) else (list(d) if isinstance(d, list) else d)


def _parse_overrides(overrides) -> dict:
    import yaml

    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    out = {}
    for item in overrides:
        if "=" not in item:
            raise InputError("--set", f"'{item}' is not of the form key=value (e.g. train.lr=1e-4).")
        key, text = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise InputError(key.strip(), f"value '{text}' is not valid YAML ({exc}).") from exc
    return out


def _set_dotted(raw: dict, key: str, value) -> None:
    parts = key.split(".")
    node = raw
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise InputError(".".join(parts[:i + 1]), "is not a section; cannot set a key inside it.")
        node = nxt
    node[parts[-1]] = value


def _resolve_paths(raw: dict, base: str) -> None:
    for key in PATH_KEYS:
        section, name = key.split(".")
        sec = raw.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(name), str) and sec[name]:
            sec[name] = os.path.normpath(os.path.join(base, os.path.expanduser(sec[name])))


def _build(cls, data, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(prefix or "config", f"must be a mapping of keys (got {type(data).__name__}).")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise InputError(dotted, f"unknown key. Valid keys{' in ' + prefix if prefix else ''}: {', '.join(names)}.")
        kind = hints[key]
        kwargs[key] = _build(kind, value, dotted) if dataclasses.is_dataclass(kind) else _coerce(value, kind, dotted)
    return cls(**kwargs)


def _coerce(value, kind, key: str):
    if kind is bool:
        if not isinstance(value, bool):
            raise InputError(key, f"must be true or false (got {value!r}).")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(key, f"must be an integer (got {value!r}).")
        return value
    if kind is float:
        if isinstance(value, bool):
            raise InputError(key, f"must be a number (got {value!r}).")
        try:
            return float(value)          # YAML reads 1e-4 (no dot) as a string
        except (TypeError, ValueError):
            raise InputError(key, f"must be a number (got {value!r}).") from None
    if kind is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise InputError(key, f"must be a string (got {value!r}).")
        return str(value)
    if kind is list:
        if not isinstance(value, list):
            raise InputError(key, f"must be a list (got {value!r}).")
        return list(value)
    if kind == Union[str, list]:
        if not isinstance(value, (str, list)):
            raise InputError(key, f"must be a string or a list (got {value!r}).")
        return list(value) if isinstance(value, list) else value
    return value


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise InputError(key, message)


def _one_of(value, options, key: str) -> None:
    _check(value in options, key, f"must be one of {list(options)} (got {value!r}).")


def validate(cfg: TrainConfig) -> None:
    """Ranges and choices; what needs the model (tau_b against its block count) is checked at training start."""
    t, d, r = cfg.train, cfg.data, cfg.data.render
    _one_of(cfg.recipe, RECIPES, "recipe")
    _one_of(cfg.model.dtype, DTYPES, "model.dtype")
    _check(cfg.model.device in ("auto", "cpu", "cuda"), "model.device",
           f"must be auto, cpu or cuda (got {cfg.model.device!r}); pick a GPU with CUDA_VISIBLE_DEVICES.")
    _check(t.steps >= 1, "train.steps", f"must be at least 1 (got {t.steps}).")
    _check(t.batch_size >= 1, "train.batch_size", f"must be at least 1 (got {t.batch_size}).")
    _check(t.lr > 0, "train.lr", f"must be positive (got {t.lr}).")
    _one_of(t.optimizer, OPTIMIZERS, "train.optimizer")
    _check(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0 (got {t.weight_decay}).")
    _check(len(t.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in t.betas), "train.betas",
           f"must be two numbers in [0, 1) (got {t.betas}).")
    _check(t.eps > 0, "train.eps", f"must be positive (got {t.eps}).")
    _check(t.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0 (got {t.warmup_steps}).")
    _check(t.grad_clip >= 0, "train.grad_clip", f"must be >= 0 (0 = no clipping; got {t.grad_clip}).")
    _one_of(t.precision, PRECISIONS, "train.precision")
    _check(t.logit_std > 0, "train.logit_std", f"must be positive (got {t.logit_std}).")
    _check(t.guidance >= 0, "train.guidance", f"must be >= 0 (got {t.guidance}).")
    _one_of(t.latents, LATENT_MODES, "train.latents")
    _one_of(t.memory_check, MEMORY_CHECKS, "train.memory_check")
    _check(t.cache_disk_mb >= 0, "train.cache_disk_mb", f"must be >= 0 megabytes (got {t.cache_disk_mb}).")
    _check(t.latent_cache_mb >= 0, "train.latent_cache_mb",
           f"must be >= 0 megabytes (0 keeps no latent; got {t.latent_cache_mb}).")
    _check(t.text_cache_size >= 1, "train.text_cache_size", f"must be at least 1 (got {t.text_cache_size}).")
    _check(1 <= t.max_sequence_length <= 512, "train.max_sequence_length",
           f"must be from 1 to 512 T5 tokens (got {t.max_sequence_length}).")
    _check(t.log_every >= 1, "train.log_every", f"must be at least 1 (got {t.log_every}).")
    _check(d.size >= 16 and d.size % 16 == 0, "data.size",
           f"must be a positive multiple of 16 (got {d.size}); Flux packs 2x2 patches of an 8x smaller latent.")
    _one_of(d.resize, RESIZE_MODES, "data.resize")
    _one_of(d.on_bad_sample, BAD_SAMPLE_POLICIES, "data.on_bad_sample")
    _check(0.0 <= d.real_ratio <= 1.0, "data.real_ratio", f"must be within [0, 1] (got {d.real_ratio}).")
    for c in d.controls:
        _check(c in CONTROL_KINDS, "data.controls", f"unknown control {c!r}; use some of {list(CONTROL_KINDS)}.")
    _check(len(set(d.controls)) == len(d.controls), "data.controls", f"lists a control twice ({d.controls}).")
    _check(r.views_per_mesh >= 1, "data.render.views_per_mesh", f"must be at least 1 (got {r.views_per_mesh}).")
    _check(len(r.elevation) == 2 and all(isinstance(e, (int, float)) and -90 < e < 90 for e in r.elevation)
           and r.elevation[0] <= r.elevation[1], "data.render.elevation",
           f"must be [min, max] degrees within (-90, 90) (got {r.elevation}).")
    _check(r.radius > 0, "data.render.radius", f"must be positive (got {r.radius}).")
    _check(0 < r.fov < 180, "data.render.fov", f"must be within (0, 180) degrees (got {r.fov}).")
    _one_of(r.image, RENDER_IMAGES, "data.render.image")
    _one_of(r.backend, BACKENDS, "data.render.backend")
    _check(cfg.shifters.rank >= 1, "shifters.rank", f"must be at least 1 (got {cfg.shifters.rank}).")
    _check(cfg.shifters.embed_dim >= 1, "shifters.embed_dim", f"must be at least 1 (got {cfg.shifters.embed_dim}).")
    _one_of(cfg.shifters.variant, VARIANTS, "shifters.variant")
    _check(cfg.lora.rank >= 1, "lora.rank", f"must be at least 1 (got {cfg.lora.rank}).")
    _check(cfg.lora.alpha > 0, "lora.alpha", f"must be positive (got {cfg.lora.alpha}).")
    _check_targets(cfg.lora.targets)
    _one_of(cfg.lora.init, LORA_INITS, "lora.init")
    _check(cfg.stage2.tau_b >= 0, "stage2.tau_b", f"must be >= 0 (got {cfg.stage2.tau_b}).")
    ra = cfg.refany3d
    _check(1 <= ra.n_views <= 60, "refany3d.n_views", f"must be from 1 to 60 (got {ra.n_views}).")
    _check(ra.condition_size >= 16 and ra.condition_size % 16 == 0, "refany3d.condition_size",
           f"must be a positive multiple of 16 (got {ra.condition_size}).")
    for name in ("prompt_dropout", "condition_dropout"):
        v = getattr(ra, name)
        _check(0.0 <= v <= 1.0, f"refany3d.{name}", f"must be within [0, 1] (got {v}).")
    _check(cfg.checkpoint.every >= 1, "checkpoint.every", f"must be at least 1 (got {cfg.checkpoint.every}).")
    _check(cfg.checkpoint.keep >= 1, "checkpoint.keep", f"must be at least 1 (got {cfg.checkpoint.keep}).")
    _check(bool(cfg.output.dir), "output.dir", "must name a folder for the trained files.")
    if cfg.recipe == "stage2" and not cfg.stage2.baseline:
        _check(bool(cfg.stage2.shifters), "stage2.shifters",
               "stage 2 needs the stage-1 shifter file (or set stage2.baseline: true for standard fine-tuning).")


def _check_targets(targets) -> None:
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as exc:
            raise InputError("lora.targets", f"is not a valid regular expression ({exc}).") from None
        _check(bool(targets), "lora.targets", "must not be empty.")
        return
    _check(bool(targets) and all(isinstance(x, str) and x for x in targets), "lora.targets",
           "must be a regular expression matched against whole module names, or a non-empty list of module "
           "names (e.g. attn.to_q).")


def dump_config(cfg: TrainConfig) -> str:
    import yaml
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
