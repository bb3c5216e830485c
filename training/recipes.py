"""Training recipes on the branched engine (SPEC.md sections 2 and 3).

A recipe decides what is trainable, how each sample becomes token branches, and what the
loss is. All use rectified-flow matching (flow_matching.py) with logit-normal timesteps. Each
sample brings its own seeded generator; every random choice about it (its plan, posterior
draw, noise, timestep) comes from that generator in a fixed order, so a step is a pure
function of (weights, seed, step) and resuming reproduces it bit for bit.

- ``stage1``: backbone frozen, new domain shifters trained; synthetic samples in domain S,
  real ones in R, no controls.
- ``stage2``: stage-1 shifters loaded and frozen. LoRA mode trains two adapters on the
  image-stream modules: ``control`` on the condition branches and ``target`` on the target
  branch (the text stream keeps the base weights); ``full_finetune`` trains every transformer
  weight instead. Synthetic samples: aligned control branches (offset 0, t = 0) + target in S
  in every block. Real samples: no control, i ~ U{0..tau_B}; blocks < i in S run without
  gradient (they get none from this sample), blocks >= i in R are trained.
- ``stage2`` with ``baseline``: the same data and trainables with no shifters, no domain
  reassignment and no frozen blocks (standard fine-tuning).
- ``refany3d``: Reference-LoRA ``default``, Domain-LoRA ``coord`` and the domain embedder
  trained; branches, tags, adapters and mask as refany3d/layout.py; one shared t for both
  targets, independent noise, loss MSE(v_rgb) + MSE(v_pointmap); prompt and condition dropout.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import contextlib
import copy
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ..adapters import DomainShifters, ShifterConfig, load_shifters, save_shifters
from ..engine import FluxEngine
from ..refany3d import layout
from ..sampling import realiz3d_layout
from ..refany3d.domain_embedder import make_domain_embedder
from ..renderers.errors import InputError
from .data import REAL, SYNTHETIC, Sample
from .backbone import as_backbone
from .encode import DiskCache, LatentCache, TextCache, draw
from .flow_matching import logit_normal, mse_per_sample, noisy, velocity
from .outputs import save_safetensors

CONTROL, TARGET = "train_control", "train_target"
REFERENCE, DOMAIN = "train_default", "train_coord"


@dataclass(frozen=True)
class Plan:
    """What a recipe does with one sample. frozen: engine blocks run without gradient;
    domains: per block, the shifter domain of the target (None: no shifts); controls: build
    control branches; drop_prompt / drop_conditions: RefAny3D's dropouts."""

    frozen: int = 0
    domains: Optional[tuple] = None
    controls: bool = False
    drop_prompt: bool = False
    drop_conditions: bool = False

    @property
    def group(self) -> tuple:
        return self.frozen, self.domains, self.controls


class Recipe(ABC):
    """Base: frozen encoders, caches, the engine and the trainable parameters."""

    name = ""

    def __init__(self, cfg, pipe, device, log: Callable[[str], None] = print):
        """pipe: a training.backbone.Backbone, or a diffusers FluxPipeline."""
        self.cfg, self.device, self.log = cfg, torch.device(device), log
        self.backbone = bb = as_backbone(pipe, device)
        self.pipe = getattr(bb, "pipe", None)
        self.transformer = getattr(bb, "transformer", None)          # diffusers only
        self.layers = bb.layers
        self.dtype = bb.dtype
        self.has_guidance = bool(bb.layers.has_guidance)
        self.num_blocks = bb.layers.num_blocks
        t = cfg.train
        disk = DiskCache(t.cache_dir, int(t.cache_disk_mb * 2 ** 20)) if t.cache_dir else None
        self.text = TextCache(bb, self.device, t.max_sequence_length, t.text_cache_size, disk)
        self.latents = LatentCache(bb, self.device, t.cache_latents, int(t.latent_cache_mb * 2 ** 20), disk)
        bb.freeze()
        self.engine: Optional[FluxEngine] = None

    # ---------------------------------------------------------------- interface
    @abstractmethod
    def trainables(self) -> "OrderedDict[str, nn.Parameter]": ...

    @abstractmethod
    def plan(self, sample: Sample, gen: torch.Generator) -> Plan: ...

    @abstractmethod
    def run_group(self, samples: list, plans: list, gens: list) -> torch.Tensor:
        """Per-sample losses [k] (with their graph) of samples that share a plan structure."""

    @abstractmethod
    def write_outputs(self, out_dir: str) -> dict: ...

    def layout(self) -> dict:
        """What a checkpoint must match to be resumed by this recipe."""
        return {"recipe": self.name, "mode": self.mode, **self.backbone.layout(),
                "trainables": {n: list(p.shape) for n, p in self.trainables().items()}}

    mode = ""

    # ---------------------------------------------------------------- shared
    def step(self, samples: list, gens: list, backward: Optional[Callable] = None,
             autocast: Callable = contextlib.nullcontext) -> list[float]:
        """Loss of every sample; with ``backward``, gradients of the mean loss over ``samples``
        are accumulated (one backward per group of samples with the same plan structure)."""
        plans = [self.plan(s, g) for s, g in zip(samples, gens)]
        groups: OrderedDict = OrderedDict()
        for i, p in enumerate(plans):
            groups.setdefault(p.group, []).append(i)
        out = [0.0] * len(samples)
        for idx in groups.values():
            with autocast():
                losses = self.run_group([samples[i] for i in idx], [plans[i] for i in idx], [gens[i] for i in idx])
            if backward is not None:
                backward(losses.sum() / len(samples))
            for i, v in zip(idx, losses.detach().float().cpu().tolist()):
                out[i] = v
        return out

    def guidance(self, n: int, value: float) -> Optional[torch.Tensor]:
        return torch.full((n,), value, device=self.device) if self.has_guidance else None

    def encode_target(self, key: str, image: torch.Tensor, gen: torch.Generator):
        """(x0 [T, 64] drawn from the posterior, (h, w) latent grid)."""
        mean, std, hw = self.latents.dist(key, image[None])
        return draw(mean[0], std[0], self.cfg.train.latents, gen), hw

    def timestep(self, gen: torch.Generator) -> torch.Tensor:
        return logit_normal(gen, 1, self.cfg.train.logit_mean, self.cfg.train.logit_std)

    def release(self) -> None:
        """Give a caller's transformer back as it came: training adapters removed, grad flags restored."""
        self.backbone.restore()

    def warm(self, sample: Sample) -> None:
        """Encode what ``sample`` needs into the caches (before the first step)."""

    def _add_lora(self, name: str) -> dict:
        lc = self.cfg.lora
        params = self.backbone.add_lora(name, lc.rank, lc.alpha, lc.targets, init=lc.peft_init(self.cfg.recipe))
        return {f"lora.{n}": p for n, p in params.items()}


class Realiz3DRecipe(Recipe):
    """stage1, stage2 (LoRA or full fine-tuning) and the stage-2 baseline."""

    def __init__(self, cfg, pipe, device, log=print):
        super().__init__(cfg, pipe, device, log)
        tr, s2 = self.layers, cfg.stage2
        self.stage1 = cfg.recipe == "stage1"
        self.baseline = not self.stage1 and s2.baseline
        self.full = not self.stage1 and s2.full_finetune
        self.name = "stage1" if self.stage1 else ("stage2-baseline" if self.baseline else "stage2")
        self.mode = "shifters" if self.stage1 else ("full" if self.full else "lora")
        if not self.stage1 and not self.baseline and s2.tau_b > self.num_blocks:
            raise InputError("stage2.tau_b", f"must be at most the model's {self.num_blocks} blocks (got {s2.tau_b}).")
        self._params: OrderedDict = OrderedDict()
        self.shifters: Optional[DomainShifters] = None
        if self.stage1:
            sc = cfg.shifters
            self.shifters = DomainShifters(ShifterConfig.for_transformer(tr, rank=sc.rank, embed_dim=sc.embed_dim,
                                                                         variant=sc.variant)).to(self.device)
            self._params.update((f"shifters.{n}", p) for n, p in self.shifters.named_parameters())
        elif self.baseline:
            if s2.shifters:
                log(f"baseline: stage2.shifters ({os.path.basename(s2.shifters)}) is not used")
        else:
            self.shifters = load_shifters(s2.shifters, "stage2.shifters")
            self.shifters.check_fits(tr, "stage2.shifters")
            self.shifters = self.shifters.to(self.device).requires_grad_(False)
        if self.shifters is not None:
            self.S, self.R = self.shifters.domain_index(SYNTHETIC), self.shifters.domain_index(REAL)
        self.control_adapters, self.target_adapters = (), ()
        if not self.stage1:
            if self.full:
                self._params.update((f"transformer.{n}", p) for n, p in self.backbone.full_parameters().items())
            else:
                self._params.update(self._add_lora(CONTROL))
                self._params.update(self._add_lora(TARGET))
                self.control_adapters, self.target_adapters = (CONTROL,), (TARGET,)
        self.engine = FluxEngine(tr, shifters=self.shifters, precompute_shifts=not self.stage1,
                                 checkpointing=cfg.train.gradient_checkpointing, compile=cfg.train.compile)

    def trainables(self):
        return self._params

    def plan(self, sample: Sample, gen: torch.Generator) -> Plan:
        nb = self.num_blocks
        if sample.domain not in (SYNTHETIC, REAL):
            raise InputError("data", f"sample {sample.key} has domain {sample.domain!r}; Realiz3D trains on "
                                     "'synthetic' and 'real' samples.")
        synthetic = sample.domain == SYNTHETIC
        if self.stage1:
            return Plan(domains=(self.S if synthetic else self.R,) * nb)
        controls = synthetic and len(self.cfg.data.controls) > 0
        if controls and (sample.controls is None or len(sample.controls) != len(self.cfg.data.controls)):
            got = 0 if sample.controls is None else len(sample.controls)
            raise InputError("data.controls", f"synthetic sample {sample.key} has {got} control maps; the config "
                                              f"lists {list(self.cfg.data.controls)}.")
        if synthetic:
            return Plan(domains=None if self.baseline else (self.S,) * nb, controls=controls)
        if self.baseline:
            return Plan()
        i = int(torch.randint(0, self.cfg.stage2.tau_b + 1, (1,), generator=gen))
        return Plan(frozen=i, domains=(self.S,) * i + (self.R,) * (nb - i))

    def warm(self, sample: Sample) -> None:
        self.text.get([sample.caption], self.dtype)
        self.latents.dist(sample.key, sample.image[None])
        if sample.domain == SYNTHETIC and not self.stage1 and self.cfg.data.controls and sample.controls is not None:
            self.latents.dist(sample.key + "|controls", sample.controls)

    def run_group(self, samples, plans, gens):
        cfg, dev, dt = self.cfg, self.device, self.dtype
        n, plan = len(samples), plans[0]
        embeds, pooled, text_ids = self.text.get([s.caption for s in samples], dt)
        x0s, noises, ts, controls = [], [], [], []
        for s, g in zip(samples, gens):
            x0, (h, w) = self.encode_target(s.key, s.image, g)
            x0s.append(x0), noises.append(torch.randn(x0.shape, generator=g)), ts.append(self.timestep(g))
            if plan.controls:
                mean, std, _ = self.latents.dist(s.key + "|controls", s.controls)
                controls.append(draw(mean, std, cfg.train.latents, g))
        x0, noise, t = torch.stack(x0s).to(dev), torch.stack(noises).to(dev), torch.cat(ts).to(dev)
        ids = self.latents.ids(h, w, dt)
        g = self.guidance(n, cfg.train.guidance)
        c = torch.stack(controls).to(dev) if plan.controls else None          # [n, C, T, 64]
        branches = realiz3d_layout.build_branches(embeds, text_ids, t, g, noisy(x0, noise, t), ids,
                                                  self.target_adapters, plan.domains, c, self.control_adapters,
                                                  self.guidance(n, 1.0))
        pred = self.engine.forward(branches, None, pooled, outputs=[1], frozen_blocks=plan.frozen)[1]
        return mse_per_sample(pred, velocity(x0, noise))

    def write_outputs(self, out_dir: str) -> dict:
        out = {}
        if self.shifters is not None:
            out["shifters"] = os.path.join(out_dir, "shifters.safetensors")
            save_shifters(copy.deepcopy(self.shifters).cpu(), out["shifters"])
        if self.full:
            out["transformer"] = self.backbone.save_full(os.path.join(out_dir, "transformer.safetensors"))
        elif not self.stage1:
            for kind, name in (("control_lora", CONTROL), ("target_lora", TARGET)):
                out[kind] = self.backbone.save_lora(name, os.path.join(out_dir, f"{kind}.safetensors"))
        return out


class RefAny3DRecipe(Recipe):
    name, mode = "refany3d", "lora"

    def __init__(self, cfg, pipe, device, log=print):
        super().__init__(cfg, pipe, device, log)
        tr, ra = self.layers, cfg.refany3d
        self._params: OrderedDict = OrderedDict()
        self._params.update(self._add_lora(REFERENCE))
        self._params.update(self._add_lora(DOMAIN))
        hidden = tr.hidden
        self.embedder = make_domain_embedder(hidden).to(self.device)
        if ra.init_from:
            self._init_from(ra.init_from, hidden)
        self._params.update((f"domain_embedder.{n}", p) for n, p in self.embedder.named_parameters())
        names = {layout.REFERENCE_ADAPTER: REFERENCE, layout.DOMAIN_ADAPTER: DOMAIN}
        self.n_views = ra.n_views
        self.adapters = [tuple(names[a] for a in ad) for ad in layout.adapters(ra.n_views)]
        self.mask = layout.group_mask(ra.n_views, text_agnostic=ra.text_agnostic).to(self.device)
        self.engine = FluxEngine(tr, domain_embedder=self.embedder, checkpointing=cfg.train.gradient_checkpointing,
                                 compile=cfg.train.compile)

    def trainables(self):
        return self._params

    def _init_from(self, folder: str, hidden: int) -> None:
        """Continue from RefAny3D weights (the published files or a previous run's outputs)."""
        from ..refany3d.domain_embedder import load_domain_embedder

        key = "refany3d.init_from"
        if not os.path.isdir(folder):
            raise InputError(key, f"'{folder}' is not a folder.")
        names = os.listdir(folder)
        for file, adapter in (("default.safetensors", REFERENCE), ("coord.safetensors", DOMAIN)):
            if file not in names:
                raise InputError(key, f"'{folder}' has no {file}.")
            self.backbone.load_lora(adapter, os.path.join(folder, file), key)
        embedder = next((n for n in ("domain_embedder.safetensors", "domain_embedder.pth") if n in names), None)
        if embedder is None:
            raise InputError(key, f"'{folder}' has no domain_embedder.safetensors or domain_embedder.pth.")
        state = load_domain_embedder(os.path.join(folder, embedder), hidden, key).state_dict()
        self.embedder.load_state_dict(state)
        self.log(f"starting from the RefAny3D weights in {folder}")

    def plan(self, sample: Sample, gen: torch.Generator) -> Plan:
        if sample.point_map is None or sample.views is None:
            raise InputError("data", f"sample {sample.key} is not a RefAny3D triplet (no point map or views).")
        u = torch.rand(2, generator=gen)
        ra = self.cfg.refany3d
        return Plan(drop_prompt=bool(u[0] < ra.prompt_dropout), drop_conditions=bool(u[1] < ra.condition_dropout))

    def warm(self, sample: Sample) -> None:
        self.text.get([sample.caption, ""], self.dtype)
        self.latents.dist(sample.key, sample.image[None])
        self.latents.dist(sample.key + "|points", sample.point_map[None])
        rgb, pts = sample.views
        self.latents.dist(f"black|{rgb.shape[1]}x{rgb.shape[2]}", torch.zeros_like(rgb[:1]))
        self.latents.dist("views|" + sample.views_key, torch.cat([rgb, pts]))

    def _views(self, s: Sample, drop: bool, gen: torch.Generator):
        rgb, pts = s.views
        if rgb.shape[0] != self.n_views:
            raise InputError("refany3d.n_views", f"sample {s.key} has {rgb.shape[0]} condition views, the config "
                                                 f"{self.n_views}.")
        if drop:          # all conditions black (image-CFG's unconditional input)
            mean, std, hw = self.latents.dist(f"black|{rgb.shape[1]}x{rgb.shape[2]}", torch.zeros_like(rgb[:1]))
            mean, std = mean.expand(2 * self.n_views, -1, -1), std.expand(2 * self.n_views, -1, -1)
        else:
            mean, std, hw = self.latents.dist("views|" + s.views_key, torch.cat([rgb, pts]))
        return draw(mean, std, self.cfg.train.latents, gen), hw, rgb.shape[2]

    def run_group(self, samples, plans, gens):
        cfg, dev, dt = self.cfg, self.device, self.dtype
        n = len(samples)
        captions = ["" if p.drop_prompt else s.caption for s, p in zip(samples, plans)]
        embeds, pooled, text_ids = self.text.get(captions, dt)
        rgb0, pts0, e_rgb, e_pts, ts, views = [], [], [], [], [], []
        for s, p, g in zip(samples, plans, gens):
            x, (h, w) = self.encode_target(s.key, s.image, g)
            y, _ = self.encode_target(s.key + "|points", s.point_map, g)
            v, (vh, vw), cond_w = self._views(s, p.drop_conditions, g)
            rgb0.append(x), pts0.append(y), views.append(v)
            e_rgb.append(torch.randn(x.shape, generator=g)), e_pts.append(torch.randn(y.shape, generator=g))
            ts.append(self.timestep(g))                          # one t shared by both targets
        x0, y0 = torch.stack(rgb0).to(dev), torch.stack(pts0).to(dev)
        ex, ey, t = torch.stack(e_rgb).to(dev), torch.stack(e_pts).to(dev), torch.cat(ts).to(dev)
        cond = torch.stack(views).to(dev)                        # [n, 2V, T, 64]
        ids = self.latents.ids(h, w, dt)
        cond_ids = layout.condition_ids(self.latents.ids(vh, vw, dt), cond_w)
        branches = layout.build_branches(embeds, text_ids, t, self.guidance(n, cfg.train.guidance), noisy(x0, ex, t),
                                         noisy(y0, ey, t), ids, cond, cond_ids, self.guidance(n, 1.0), self.adapters)
        out = self.engine.forward(branches, self.mask, pooled, outputs=[1, 2])
        return mse_per_sample(out[1], velocity(x0, ex)) + mse_per_sample(out[2], velocity(y0, ey))

    def write_outputs(self, out_dir: str) -> dict:
        return {"default": self.backbone.save_lora(REFERENCE, os.path.join(out_dir, "default.safetensors")),
                "coord": self.backbone.save_lora(DOMAIN, os.path.join(out_dir, "coord.safetensors")),
                "domain_embedder": save_safetensors(self.embedder.state_dict(),
                                                    os.path.join(out_dir, "domain_embedder.safetensors"),
                                                    {"format": "refany3d-domain-embedder"})}


def make_recipe(cfg, pipe, device, log=print) -> Recipe:
    return (RefAny3DRecipe if cfg.recipe == "refany3d" else Realiz3DRecipe)(cfg, pipe, device, log)
