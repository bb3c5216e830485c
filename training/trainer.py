"""The training loop: one function, :func:`train`, for one process or many (accelerate).

Every process builds the same model, data and trainables from the same seed, draws the same
global batch order and trains on its own slice of it; gradients are averaged across processes
before the optimizer step, so all processes keep identical weights. Only the main process
writes files (checkpoints, outputs, the loss curve) and reports progress. Full fine-tuning
launched with an FSDP accelerate config is sharded instead (training/fsdp.py).
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ..renderers.errors import InputError
from .checkpoint import check_compatible, read_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig, dump_config
from .data import REAL, SYNTHETIC, TRIPLET, build_datasets
from .data_order import DataOrder, SampleLoader, seed_of
from .loss_curve import save_loss_curve
from .outputs import save_text
from .backbone import DiffusersBackbone
from .recipes import make_recipe
from .runs import CONTINUE, check_resume

logger = logging.getLogger("realiz3d.training")


@dataclass
class TrainResult:
    """losses: mean loss of every step (all processes), from step 1 (a resumed run includes the
    steps before the resume); outputs: {kind: path} of the files the inference code loads;
    stopped: ended by should_stop / Ctrl-C before the last step; checkpoint: the last one
    written; loss_curve: PNG path; steps: steps done; parameters: the trained tensors."""

    losses: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    stopped: bool = False
    checkpoint: Optional[str] = None
    loss_curve: Optional[str] = None
    steps: int = 0
    parameters: dict = field(default_factory=dict)


def make_accelerator(cfg: TrainConfig):
    """An ``accelerate.Accelerator`` with the config's precision. A single process that already
    made one with another precision (a second run in ComfyUI, tests) gets a fresh state."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    kw = dict(cpu=cfg.model.device == "cpu", mixed_precision=cfg.train.precision)
    try:
        accel = Accelerator(**kw)
        if kw["cpu"] or accel.device.type != "cpu" or not torch.cuda.is_available():
            return accel
    except ValueError:
        pass
    if PartialState().num_processes > 1:            # a launched run: its state is the launcher's
        return Accelerator(**kw)
    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(**kw)


def load_pipe(cfg: TrainConfig, device):
    from ..loading import load_pipeline_folder, load_single_files

    m = cfg.model
    if m.folder:
        return load_pipeline_folder(m.folder, m.dtype, device, input_name="model.folder").pipeline()
    if m.transformer:
        for key in ("vae", "clip", "t5"):
            if not getattr(m, key):
                raise InputError(f"model.{key}", "single-file loading needs transformer, vae, clip and t5 files.")
        return load_single_files(m.transformer, m.vae, m.clip, m.t5, m.clip_tokenizer or None, m.t5_tokenizer or None,
                                 m.dtype, device).pipeline()
    raise InputError("model.folder", "give a diffusers Flux folder (model.folder) or single files "
                                     "(model.transformer, model.vae, model.clip, model.t5).")


def make_optimizer(cfg: TrainConfig, params: list):
    t = cfg.train
    if t.optimizer == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise InputError("train.optimizer", "Prodigy needs the prodigyopt package (pip install prodigyopt); "
                                                "or use adamw.") from None
        return Prodigy(params, lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay,
                       use_bias_correction=t.prodigy_bias_correction, safeguard_warmup=t.prodigy_safeguard_warmup)
    return torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Constant after a linear warm-up over train.warmup_steps (a function of the step alone)."""
    w = cfg.train.warmup_steps
    return cfg.train.lr * (min(1.0, (step + 1) / w) if w else 1.0)


def _ratios(cfg: TrainConfig) -> dict:
    if cfg.recipe == "refany3d":
        return {TRIPLET: 1.0}
    return {REAL: cfg.data.real_ratio, SYNTHETIC: 1.0 - cfg.data.real_ratio}


class _Distributed:
    """Gradient averaging and agreement across processes (no-ops for one process)."""

    def __init__(self, accel):
        self.accel, self.n = accel, accel.num_processes

    def broadcast(self, params: list) -> None:
        if self.n > 1:
            for p in params:
                torch.distributed.broadcast(p.data, src=0)

    def average_grads(self, params: list) -> None:
        """Mean gradient over processes; a tensor no process touched keeps grad None, so the
        optimizer leaves it exactly as it is (frozen blocks of a real sample)."""
        if self.n == 1:
            return
        dev = params[0].device
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=dev)
        torch.distributed.all_reduce(has)
        live = [p for p, h in zip(params, has.tolist()) if h > 0]
        for p in live:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for bucket in _buckets(live):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            torch.distributed.all_reduce(flat)
            flat /= self.n
            offset = 0
            for p in bucket:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
                offset += p.numel()

    def mean(self, value: float) -> float:
        if self.n == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.accel.device)
        torch.distributed.all_reduce(t)
        return float(t) / self.n

    def any(self, flag: bool) -> bool:
        if self.n == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.accel.device)
        torch.distributed.all_reduce(t)
        return bool(t > 0)


def _buckets(params: list, size: int = 1 << 25):
    bucket, n = [], 0
    for p in params:
        bucket.append(p)
        n += p.numel()
        if n >= size:
            yield bucket
            bucket, n = [], 0
    if bucket:
        yield bucket


def train(cfg: TrainConfig, pipe=None, progress: Optional[Callable[[int, int], None]] = None,
          should_stop: Optional[Callable[[], bool]] = None, log: Optional[Callable[[str], None]] = None,
          resume: Optional[str] = None, datasets: Optional[dict] = None, on_change: str = "refuse",
          backbone=None) -> TrainResult:
    """Train ``cfg.recipe``; returns a :class:`TrainResult`.

    pipe: an already loaded diffusers FluxPipeline (else loaded from cfg.model). Training adds
    its adapters to pipe.transformer and removes them at the end (the trained weights are in
    the output files); full fine-tuning changes pipe.transformer's weights in place, so pass a
    pipeline you own. progress(step, total) after every step; should_stop() is checked before
    every step: when true, a checkpoint and the outputs are written and the result has
    stopped=True. log(str) receives the log lines (default: the ``realiz3d.training`` logger).
    resume: a checkpoint file, or a folder whose newest checkpoint is used. Its stored config is
    compared with ``cfg`` (training.runs): any change beyond steps, logging, checkpointing and
    caches is refused with the differences listed, unless ``on_change`` is 'continue anyway'.
    backbone: a :class:`training.backbone.Backbone` to train on instead of ``pipe`` (ComfyUI's
    MODEL through nodes/: its weights are never modified).
    datasets: {source: Dataset} to train on instead of the folders of cfg.data (sources:
    'real' / 'synthetic', or 'refany3d').
    """
    from . import fsdp

    accel = make_accelerator(cfg)
    if accel.distributed_type.name in ("DEEPSPEED", "MEGATRON_LM"):
        raise InputError("accelerate", f"{accel.distributed_type.name} is not supported: data parallelism "
                                       "(training/configs/accelerate_multi_gpu.yaml, or --multi_gpu) for LoRA, "
                                       "shifter and RefAny3D training; FSDP (training/configs/accelerate_fsdp.yaml) "
                                       "for full fine-tuning.")
    shard = fsdp.fsdp_requested(accel)
    if shard:
        fsdp.check_request(cfg, fsdp.fsdp_plugin(accel))
    dist = _Distributed(accel)
    main = accel.is_main_process

    def say(msg: str) -> None:
        if main:
            (log or logger.info)(msg)

    own_pipe = pipe is None and backbone is None
    if backbone is None:
        if own_pipe and shard:           # FSDP: the transformer goes to the device shard by shard
            pipe = load_pipe(cfg, "cpu")
            fsdp.encoders_to(pipe, accel.device)
        elif own_pipe:
            pipe = load_pipe(cfg, accel.device)
        else:
            pipe.to(accel.device)
        backbone = DiffusersBackbone(pipe, accel.device)
    if datasets is None:
        datasets = build_datasets(cfg, say)
    ratios = _ratios(cfg)
    for source, ratio in ratios.items():
        if ratio > 0 and source not in datasets:
            raise InputError(f"data.{source}", f"the recipe draws {source} samples (ratio {ratio}); none were given.")
    order = DataOrder(cfg.train.seed, {s: len(d) for s, d in datasets.items() if ratios.get(s, 0) > 0}, ratios)
    loader = SampleLoader(datasets, cfg.data.on_bad_sample, say)

    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed % 2 ** 32)
    random.seed(cfg.train.seed)
    recipe = make_recipe(cfg, backbone, accel.device, say)
    try:
        if cfg.train.precache:
            _precache(recipe, loader, order, say, should_stop)
            backbone.release_encoders()
        return _run(cfg, accel, dist, recipe, order, loader, progress, should_stop, say, resume,
                    on_change == CONTINUE, shard)
    finally:
        if not own_pipe:
            recipe.release()


def _precache(recipe, loader, order, say, should_stop=None) -> None:
    """Encode every sample's captions and latents into the caches before the first step, so the
    encoders can leave the device (train.precache)."""
    n = sum(order.sizes[s] for s in order.sources)
    say(f"encoding {n} samples (captions and latents) before the first step")
    tick = time.perf_counter()
    before = recipe.latents.encoded + recipe.text.encoded
    for source in order.sources:
        for i in range(order.sizes[source]):
            if should_stop is not None and should_stop():
                return
            with torch.no_grad():
                recipe.warm(loader.load(source, i))
    done = recipe.latents.encoded + recipe.text.encoded - before
    say(f"encoded in {time.perf_counter() - tick:.1f} s ({done} encoder calls; the rest came from the cache)")


def _check_memory(cfg, recipe, device, say) -> None:
    """Before the first step: the estimate (training.memory) against the device's free memory."""
    from .memory import check_fits

    bb = recipe.backbone
    free, _ = torch.cuda.mem_get_info(device)
    est = check_fits(bb.layout(), cfg, free, bb.resident_bytes(device), bb.weight_bytes(), say,
                     compute_bytes=torch.finfo(recipe.dtype).bits // 8)
    say(f"memory estimate: {est.describe()}; {free / 2 ** 30:.1f} GiB free")


def _run(cfg, accel, dist, recipe, order, loader, progress, should_stop, say, resume,
         continue_anyway: bool = False, shard: bool = False) -> TrainResult:
    """The loop. shard: FSDP full fine-tuning (training.fsdp): the transformer is sharded after
    a resume's parameters are loaded, every process runs its samples one at a time, FSDP reduces
    the gradients, checkpoints gather the full state, and the transformer is unsharded at the end."""
    main, t = accel.is_main_process, cfg.train
    named = recipe.trainables()
    result = TrainResult()
    step = 0
    data = None
    if resume:
        data = read_checkpoint(resume, mmap=shard)
        check_compatible(data, recipe.layout())
        check_resume(data, cfg.to_dict(), CONTINUE if continue_anyway else "refuse", say)
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(data["params"][name].to(p.device, p.dtype))
    sharded = None
    if shard:                            # every process loaded the same files: no broadcast
        from .fsdp import shard_full_finetune

        sharded = shard_full_finetune(accel, recipe, named, say)
    params = list(named.values())
    # accelerate's prepare wants the model with the optimizer under FSDP2; the model is sharded here
    optimizer = make_optimizer(cfg, params) if sharded is not None else accel.prepare(make_optimizer(cfg, params))
    if data is not None:
        if sharded is not None:
            sharded.load_optimizer(optimizer, data["optimizer"], params)
        else:
            optimizer.load_state_dict(data["optimizer"])
        if continue_anyway and dict(data["order"]["sizes"]) != order.sizes:
            say(f"the datasets changed size ({data['order']['sizes']} -> {order.sizes}): a fresh sample order")
            order.step = int(data["order"]["step"])
        else:
            order.load_state_dict(data["order"])
        set_rng_state(data["rng"])
        step, result.losses = int(data["step"]), list(data["losses"])
        say(f"resumed from {data['path']} at step {step}")
    if sharded is None:
        dist.broadcast(params)
    out_dir, ckpt_dir = cfg.output.dir, cfg.checkpoint_dir
    if main:
        os.makedirs(out_dir, exist_ok=True)
        save_text(dump_config(cfg), os.path.join(out_dir, "config.yaml"))

    def checkpoint() -> None:
        if sharded is not None:          # every process takes part in gathering the full state
            full = {"params": sharded.gather(named, main), "optimizer": sharded.gather_optimizer(optimizer, main)}
        if main:
            if sharded is None:
                full = {"params": {n: p.detach().cpu() for n, p in named.items()}, "optimizer": optimizer.state_dict()}
            payload = {"layout": recipe.layout(), "losses": list(result.losses), "rng": rng_state(),
                       "params": full["params"], "optimizer": full["optimizer"], "order": order.state_dict(),
                       "config": dump_config(cfg)}
            result.checkpoint = save_checkpoint(ckpt_dir, step, payload, cfg.checkpoint.keep)
            say(f"checkpoint {result.checkpoint}")
        accel.wait_for_everyone()

    if accel.device.type == "cuda":
        if sharded is not None:
            from .fsdp import check_memory
            check_memory(cfg, recipe, accel.device, accel.num_processes, say)
        else:
            _check_memory(cfg, recipe, accel.device, say)
    rank, world, batch = accel.process_index, accel.num_processes, t.batch_size
    say(f"{recipe.name} ({recipe.mode}): {sum(p.numel() for p in params):,} trained parameters in {len(params)} "
        f"tensors, {t.steps} steps x {batch * world} samples, {world} process(es) on {accel.device}")
    last_saved, window, tick = step, [], time.perf_counter()
    # no checkpoint is written when an exception (KeyboardInterrupt included) ends the loop: it may
    # land between the backward pass and the optimizer step. The clean stop is should_stop().
    while step < t.steps:
        if dist.any(bool(should_stop and should_stop())):
            result.stopped = True
            say(f"stopped at step {step}")
            break
        picks = order.next(batch * world)[rank * batch:(rank + 1) * batch]
        samples = [loader.load(s, i) for s, i in picks]
        gens = [torch.Generator().manual_seed(seed_of(t.seed, step, rank * batch + k)) for k in range(batch)]
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if sharded is None:
            losses = recipe.step(samples, gens, backward=accel.backward, autocast=accel.autocast)
        else:                            # the same forwards and backwards on every process (training.fsdp)
            losses = []
            for sample, gen in zip(samples, gens):
                losses += recipe.step([sample], [gen], backward=lambda l: accel.backward(l / batch),
                                      autocast=accel.autocast)
        loss = dist.mean(sum(losses) / len(losses))
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss is {loss} at step {step + 1}; lower train.lr or use train.precision: "
                                     "no. The weights were not updated; the last checkpoint is intact.")
        if sharded is None:
            dist.average_grads(params)
        else:
            sharded.drop_untouched(accel.device)
        if t.grad_clip > 0:
            live = [p for p in params if p.grad is not None]
            if live and sharded is not None:
                torch.nn.utils.clip_grad_norm_(live, t.grad_clip)
            elif live:
                accel.clip_grad_norm_(live, t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(loss)
        window.append(loss)
        step += 1
        if main and progress is not None:
            progress(step, t.steps)
        if step % t.log_every == 0 or step == t.steps:
            now = time.perf_counter()
            say(f"step {step}/{t.steps} loss {sum(window) / len(window):.4f} lr {lr:.2e} "
                f"{(now - tick) / len(window):.2f} s/step")
            window, tick = [], now
        if step % cfg.checkpoint.every == 0 and step < t.steps:
            checkpoint()
            last_saved = step
    if step > last_saved or result.checkpoint is None:
        checkpoint()
    if sharded is not None:              # the trained weights, unsharded, on every process
        optimizer.zero_grad(set_to_none=True)
        optimizer.state.clear()
        sharded.release()
        for key, p in recipe.transformer.named_parameters():
            if f"transformer.{key}" in named:
                named[f"transformer.{key}"] = p
    result.steps = step
    result.parameters = {n: p.detach() for n, p in named.items()}
    if main:
        result.outputs = recipe.write_outputs(out_dir)
        result.loss_curve = save_loss_curve(result.losses, os.path.join(out_dir, "loss_curve.png"),
                                            f"{recipe.name} ({recipe.mode})")
        result.outputs["loss_curve"] = result.loss_curve
        say("wrote " + ", ".join(f"{k}: {v}" for k, v in result.outputs.items()))
    accel.wait_for_everyone()
    return result


def evaluate_loss(cfg: TrainConfig, pipe, samples: list, parameters: Optional[dict] = None, seed: int = 1234,
                  draws: int = 4) -> float:
    """Mean loss of ``samples`` under fixed draws (plan, timestep, noise from ``seed``), with the
    recipe's trainables set to ``parameters`` (a TrainResult's) or freshly initialised: a
    validation loss that is comparable across runs (``pipe``: a FluxPipeline or a training
    Backbone). LoRA and shifter recipes leave ``pipe`` as
    they found it; for full fine-tuning the parameters are copied into ``pipe.transformer``."""
    from .backbone import as_backbone

    torch.manual_seed(cfg.train.seed)
    backbone = as_backbone(pipe)
    recipe = make_recipe(cfg, backbone, backbone.device, lambda msg: None)
    try:
        if parameters is not None:
            with torch.no_grad():
                for name, p in recipe.trainables().items():
                    p.copy_(parameters[name].to(p.device, p.dtype))
        batch = [s for s in samples for _ in range(draws)]
        gens = [torch.Generator().manual_seed(seed_of(seed, k)) for k in range(len(batch))]
        with torch.no_grad():
            losses = recipe.step(batch, gens)
        return sum(losses) / len(losses)
    finally:
        recipe.release()
