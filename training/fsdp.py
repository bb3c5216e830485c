"""Full fine-tuning sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``) under accelerate.

Launched with an accelerate config of ``distributed_type: FSDP`` and ``fsdp_version: 2``
(training/configs/accelerate_fsdp.yaml), the trainer shards full fine-tuning's parameters, their
gradients and the optimizer state over the processes: every DiT block is one FSDP unit, the
transformer (embedders, time embedding, final layer) the root unit.

The branched engine (engine/flux_engine.py) never calls a block's ``forward``: it reaches the
block's layers one by one. FSDP's hooks fire on a module's forward, so the engine hands its block
loop to :class:`ShardedEngine` (``engine.sharded``), which runs the whole engine forward through a
forward method registered on the root (``register_fsdp_forward_method``) and each block through a
method registered on that block. FSDP therefore does what it does for an ordinary forward:
all-gathers a unit's parameters before it runs, frees them after, all-gathers again for its
backward and reduce-scatters its gradients after it, each unit at its place in the backward.

FSDP's collectives must be called in the same order on every process, so every process must run
the same sequence of unit forwards and backwards. Two things of the recipes depend on the data:

- the plan groups of a process's samples (one forward and backward per group): under FSDP every
  process runs its ``train.batch_size`` samples one at a time, each with its own backward of
  loss / batch_size (the gradients accumulate, sharded);
- Realiz3D's frozen blocks (a real sample's blocks < i run under ``no_grad``): under FSDP they run
  with autograd, and the block inputs at block i pass through :class:`_ZeroGrad` (identity forward,
  zero backward), so blocks < i and the embedders get exactly zero gradient from the sample, as
  every process runs the same backward. A tensor that no sample of any process trained (blocks <
  the smallest i of the step, the embedders when no sample had i = 0) gets its gradient set to
  None before the optimizer step, as the data-parallel trainer leaves it: AdamW skips it.
  This costs the backward through the frozen blocks (up to the 41 % saved by freezing 9 of 12
  blocks in benchmarks/train_step.py), not memory (the peak is that of a sample with i = 0).

Checkpoints hold the full (gathered) tensors in the single-process format (parameter names,
``optimizer.state_dict()`` with full tensors): gathered one tensor at a time and kept on the main
process's CPU only; a resume loads the parameters before sharding and scatters the optimizer
state. At the end the transformer is given back unsharded (plain parameters, the trained
weights on every process), so the outputs are written as a single process writes them.
"""
from __future__ import annotations

import copy
import functools
import os
from typing import Optional

import torch
from torch import nn

from ..renderers.errors import InputError

FIX = ("launch it data parallel with training/configs/accelerate_multi_gpu.yaml (one machine) or "
       "accelerate_multi_node.yaml (several)")
_BLOCK_METHOD, _ROOT_METHOD = "_realiz3d_block", "_realiz3d_forward"


def fsdp_requested(accel) -> bool:
    """An FSDP launch: accelerate's FSDP state, or (processes on the CPU, where accelerate keeps
    MULTI_CPU) the launcher's ACCELERATE_USE_FSDP."""
    if accel.distributed_type.name == "FSDP":
        return True
    return accel.num_processes > 1 and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_plugin(accel):
    plugin = getattr(accel.state, "fsdp_plugin", None)
    if plugin is None:
        from accelerate.utils import FullyShardedDataParallelPlugin
        plugin = FullyShardedDataParallelPlugin()            # from the launcher's FSDP_* variables
    return plugin


def check_request(cfg, plugin) -> None:
    """What this trainer shards: full fine-tuning with FSDP2. Everything else is refused with the fix."""
    full = cfg.recipe == "stage2" and cfg.stage2.full_finetune
    if not full:
        what = "the domain shifters" if cfg.recipe == "stage1" else (
            "the RefAny3D LoRAs and domain embedder" if cfg.recipe == "refany3d" else "LoRAs")
        raise InputError("accelerate", f"FSDP shards full fine-tuning only (stage2.full_finetune: true); this run "
                                       f"trains {what}, a few tensors beside a frozen model every process holds: "
                                       f"{FIX}.")
    if int(getattr(plugin, "fsdp_version", 1) or 1) != 2:
        raise InputError("accelerate", "full fine-tuning shards with FSDP2: set fsdp_version: 2 in the accelerate "
                                       "config's fsdp_config (training/configs/accelerate_fsdp.yaml).")
    if cfg.train.precision == "fp16":
        raise InputError("train.precision", "fp16 (its gradient scaler) is not supported with FSDP; use bf16 or no.")
    if cfg.train.compile:
        raise InputError("train.compile", "compiled blocks are not supported with FSDP yet; set train.compile: false.")


class _ZeroGrad(torch.autograd.Function):
    """Identity forward, zero gradient: the boundary of a sample's frozen blocks under FSDP."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


def _unit_call(engine, layer: int, run, block, st, xs, tembs):
    """One block's work (the engine's shift and block function), with ``tembs`` as given: FSDP's
    pre-forward hands the inputs on wrapped, so its post-backward waits for their gradients."""
    st = copy.copy(st)
    st.tembs = tembs
    return run(block, st, engine._shift(layer, st, xs), None)


class ShardedEngine:
    """FSDP2 over a diffusers FluxTransformer2DModel, driving a FluxEngine's forward (``engine.sharded``)."""

    def __init__(self, engine, transformer, mesh, reshard_after_forward=True, offload_policy=None):
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        self.engine, self.transformer, self.mesh = engine, transformer, mesh
        self.home = next(transformer.parameters()).device          # where release() gives it back
        self.units = list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks)
        if len(self.units) != engine.num_blocks:
            raise ValueError("FSDP: the engine's blocks are not the transformer's")
        kw = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
        if offload_policy is not None:
            kw["offload_policy"] = offload_policy
        self._classes = {}
        for unit in self.units:
            self._classes[unit] = type(unit)
            setattr(unit, _BLOCK_METHOD, functools.partial(_unit_call, engine))
            fully_shard(unit, **kw)
            register_fsdp_forward_method(unit, _BLOCK_METHOD)
        self._classes[transformer] = type(transformer)
        setattr(transformer, _ROOT_METHOD, self._root_forward)
        fully_shard(transformer, **kw)
        register_fsdp_forward_method(transformer, _ROOT_METHOD)
        engine.sharded = self
        self.inside = False
        self.min_frozen: Optional[int] = None

    # ------------------------------------------------------------------ the engine's hooks
    def forward(self, branches, group_mask, pooled, outputs, kv_cache, frozen_blocks):
        """engine.forward under FSDP: the whole forward inside the root unit's forward."""
        if kv_cache is not None:
            raise ValueError("a KV cache is not supported on an FSDP-sharded engine (training only)")
        self.min_frozen = frozen_blocks if self.min_frozen is None else min(self.min_frozen, frozen_blocks)
        return getattr(self.transformer, _ROOT_METHOD)(branches, group_mask, pooled, outputs, frozen_blocks)

    def _root_forward(self, branches, group_mask, pooled, outputs, frozen_blocks):
        self.inside = True
        try:
            return self.engine.forward(branches, group_mask, pooled, outputs, None, frozen_blocks)
        finally:
            self.inside = False

    def run_blocks(self, st, xs, blocks, frozen_blocks: int):
        """The engine's block loop: every block with autograd, through its unit; the frozen
        prefix's gradient cut to zero at block ``frozen_blocks``."""
        from torch.utils.checkpoint import checkpoint

        grad = torch.is_grad_enabled()
        for layer, (run, block) in enumerate(blocks):
            if grad and frozen_blocks and layer == frozen_blocks:
                xs = [_ZeroGrad.apply(x) for x in xs]
            method = functools.partial(getattr(self.units[layer], _BLOCK_METHOD), layer, run, block, st)
            if self.engine.checkpointing and grad:
                xs = checkpoint(method, xs, st.tembs, use_reentrant=False)
            else:
                xs = method(xs, st.tembs)
        if grad and frozen_blocks and frozen_blocks == len(blocks):
            xs = [_ZeroGrad.apply(x) for x in xs]
        return xs

    # ------------------------------------------------------------------ the trainer's side
    def drop_untouched(self, device) -> None:
        """Gradients of tensors no sample of any process trained this step -> None (AdamW skips
        them, as in data-parallel and single-process runs)."""
        local = self.min_frozen if self.min_frozen is not None else self.engine.num_blocks
        m = torch.tensor([local], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.MIN)
        m = int(m)
        self.min_frozen = None
        if m == 0:
            return
        mods = self.units[:m] + [self.transformer.x_embedder, self.transformer.context_embedder]
        for mod in mods:
            for p in mod.parameters():
                p.grad = None

    def gather(self, named: dict, main: bool) -> dict:
        """Full tensors of ``named`` (one all-gather each), on the main process's CPU."""
        out = {}
        with torch.no_grad():
            for n, p in named.items():
                full = _full(p)
                if main:
                    out[n] = full.detach().cpu()
                del full
        return out

    def gather_optimizer(self, optimizer, main: bool) -> dict:
        """``optimizer.state_dict()`` with full tensors (the single-process format), on the main process."""
        sd = optimizer.state_dict()
        state = {}
        for idx in sorted(sd["state"]):
            entry = {}
            for key in sorted(sd["state"][idx]):
                v = sd["state"][idx][key]
                v = _full(v) if _is_dtensor(v) else v
                if main:
                    entry[key] = v.detach().cpu() if torch.is_tensor(v) else v
            if main:
                state[idx] = entry
        return {"state": state, "param_groups": copy.deepcopy(sd["param_groups"])} if main else {}

    def load_optimizer(self, optimizer, sd: dict, params: list) -> None:
        """A full optimizer state (a checkpoint's) into the sharded optimizer: each process keeps its shards."""
        from torch.distributed.tensor import distribute_tensor

        state = {}
        for idx, entry in sd["state"].items():
            p = params[int(idx)]
            state[idx] = {k: (distribute_tensor(v.to(p.device, p.dtype), p.device_mesh, p.placements,
                                                src_data_rank=None)
                              if torch.is_tensor(v) and _is_dtensor(p) and tuple(v.shape) == tuple(p.shape) else v)
                          for k, v in entry.items()}
        optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})

    def release(self) -> None:
        """Give the transformer back unsharded where it was before sharding (the CPU for a model
        the trainer loaded, the caller's device for a caller's pipeline): plain parameters holding
        the full trained weights on every process, FSDP's hooks, forward methods and module
        classes removed. Gathered one tensor at a time (one full tensor on the device at once).

        Undoing ``fully_shard`` has no public API in torch 2.13; this removes what it installs
        (hook handles, state-dict hooks, the FSDP class, the composable-state entries)."""
        import importlib

        from torch.distributed import _composable_state
        contract = importlib.import_module("torch.distributed._composable.contract")

        t = self.transformer
        with torch.no_grad():
            full = {n: _full(p).detach().to(self.home, copy=True) for n, p in t.named_parameters()}
            flags = {n: p.requires_grad for n, p in t.named_parameters()}
        modules = self.units + [t]
        for mod in modules:
            state = mod._get_fsdp_state()
            for handle in {state._pre_forward_hook_handle, state._post_forward_hook_handle}:
                if handle is not None:
                    handle.remove()
            for group in getattr(state, "_fsdp_param_groups", None) or [getattr(state, "_fsdp_param_group", None)]:
                if group is None:
                    continue
                for hooks in (group._module_to_pre_save_state_dict_hook_handle,
                              group._module_to_pre_load_state_dict_hook_handle):
                    for handle in hooks.values():
                        handle.remove()
                    hooks.clear()
        for mod in modules:
            mod.__dict__.pop(_BLOCK_METHOD if mod is not t else _ROOT_METHOD, None)
            mod.__dict__.pop(contract.STATE_KEY, None)
            mod.__dict__.pop(contract.REGISTRY_KEY, None)
            _composable_state._module_state_mapping.pop(mod, None)
            mod.__class__ = self._classes[mod]
        for sub in t.modules():
            sub.__dict__.pop("_is_fsdp_managed_module", None)
            sub.__dict__.pop("_fsdp_use_orig_params", None)
        for name, value in full.items():
            owner, _, leaf = name.rpartition(".")
            mod = t.get_submodule(owner) if owner else t
            mod._parameters[leaf] = nn.Parameter(value, requires_grad=flags[name])
        self.engine.sharded = None


def _is_dtensor(x) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(x, DTensor)


def _full(x):
    return x.full_tensor() if _is_dtensor(x) else x


def encoders_to(pipe, device) -> None:
    """Everything of a pipeline loaded on the CPU but its transformer to ``device`` (fully_shard
    moves each unit's shard there: no process ever holds the whole transformer on the device)."""
    for name, module in pipe.components.items():
        if name != "transformer" and isinstance(module, nn.Module):
            module.to(device)


def shard_full_finetune(accel, recipe, named: dict, say) -> ShardedEngine:
    """Shard the recipe's transformer (FSDP2 units: every block, the transformer as root) and
    replace ``named``'s parameters (the recipe's trainables, in place) by the sharded ones."""
    from torch.distributed.device_mesh import init_device_mesh

    plugin = fsdp_plugin(accel)
    transformer = recipe.transformer
    if transformer is None:
        raise InputError("stage2.full_finetune", "FSDP shards a diffusers transformer (the command line's model); "
                                                 f"this model cannot be sharded: {FIX}.")
    mesh = init_device_mesh(accel.device.type, (accel.num_processes,))
    offload = plugin.cpu_offload if type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy" else None
    reshard = plugin.reshard_after_forward if isinstance(plugin.reshard_after_forward, bool) else True
    sharded = ShardedEngine(recipe.engine, transformer, mesh, reshard, offload)
    if recipe.engine.shift_table is not None:          # made beside the transformer, before it moved
        recipe.engine.shift_table = recipe.engine.shift_table.to(accel.device)
    by_name = dict(transformer.named_parameters())
    for key in list(named):
        named[key] = by_name[key[len("transformer."):]]
    say(f"FSDP: {len(sharded.units)} blocks + the root sharded over {accel.num_processes} processes "
        f"(reshard after forward: {reshard}{', parameters offloaded to the CPU' if offload else ''})")
    return sharded


def sharded_memory(layout: dict, cfg, world: int, compute_bytes: int = 2):
    """training.memory's estimate with the trained tensors, their gradients and the optimizer
    state divided over ``world`` processes (what FSDP keeps per device; activations unchanged)."""
    from .memory import MemoryEstimate, training_memory

    est = training_memory(layout, cfg, weight_bytes=0, compute_bytes=compute_bytes)
    parts = dict(est.parts)
    for key in ("trainables", "gradients", "optimizer"):
        parts[key] = -(-parts[key] // world)
    # gathered units: the running block and the prefetched next one, weights and gradients
    # unsharded (the largest unit: a double block)
    stored = {"fp32": 4, "bf16": 2, "fp16": 2}[cfg.model.dtype]
    parts["gathered"] = 4 * double_block_parameters(layout) * stored
    return MemoryEstimate(parts, est.tokens)


def double_block_parameters(layout: dict) -> int:
    """Parameters of one FLUX.1 double block (training.memory.base_parameters' terms)."""
    from .memory import MLP_RATIO

    d, hd = layout["hidden"], layout.get("head_dim", 128)
    m = layout.get("mlp", MLP_RATIO * d)
    lin = lambda i, o: i * o + o  # noqa: E731
    return 2 * (lin(d, 6 * d) + lin(d, 3 * d) + lin(d, d) + lin(d, m) + lin(m, d)) + 4 * hd


def check_memory(cfg, recipe, device, world: int, say) -> None:
    """Before the first step on a GPU, after sharding (the shards are resident)."""
    from .memory import GiB

    free, _ = torch.cuda.mem_get_info(device)
    est = sharded_memory(recipe.backbone.layout(), cfg, world, torch.finfo(recipe.dtype).bits // 8)
    need = est.total - est.parts["trainables"]
    say(f"memory estimate per process (FSDP over {world}): {est.describe()}; {free / GiB:.1f} GiB free")
    if need > free and cfg.train.memory_check != "off":
        msg = (f"this run needs about {need / GiB:.1f} GiB more device memory per process, the device has "
               f"{free / GiB:.1f} GiB free (estimate: {est.describe()}). More processes, gradient checkpointing "
               "(train.gradient_checkpointing) or a smaller size would lower it. (train.memory_check: warn trains "
               "anyway.)")
        if cfg.train.memory_check == "warn":
            say("memory: " + msg)
        else:
            raise InputError("memory", msg)

