"""A Flux MM-DiT run as token branches (SPEC.md section 1), on any weight layout of engine.layers
(diffusers' FluxTransformer2DModel, or Black Forest Labs' layout as ComfyUI builds it).

The engine reuses the model's modules and weights and only re-orders the computation:
every branch gets its own modulation (AdaLN from its own timestep embedding), projections,
norms, RoPE and MLP; attention is joint over the branches a group mask allows. Nothing of the
model is modified, so one model serves plain and branched sampling (and the host's other nodes) alike.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
from torch import nn

from .attention import grouped_attention
from .branches import Branch
from .layers import FluxLayers, flux_layers


class KVCache:
    """Keys and values of branches that do not change across denoising steps (SPEC.md
    section 1, after OminiControl2): conditions at t = 0 that attend only to themselves and
    their pair. The first forward writes them; later forwards skip those branches entirely and
    read their keys and values. Exact only when the cached branches' mask rows contain cached
    branches alone; the engine checks that.
    """

    def __init__(self, branches: Sequence[int]):
        self.branches = set(branches)
        self.store: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.filled = False

    def check(self, mask: Optional[torch.Tensor], n: int) -> None:
        if mask is None:
            raise ValueError("a KV cache needs a group mask in which cached branches see only cached branches")
        for i in self.branches:
            seen = {j for j in range(n) if mask[i, j]}
            if not seen <= self.branches:
                raise ValueError(f"cached branch {i} attends to branches {sorted(seen - self.branches)}, whose "
                                 "states change every step; its keys and values cannot be cached exactly")


class FluxEngine:
    """Branched forward of a Flux transformer.

    model: a diffusers ``FluxTransformer2DModel``, a BFL-layout Flux module (ComfyUI's
    ``diffusion_model``), or a :class:`engine.layers.FluxLayers` over either.
    domain_embedder: optional module mapping a LongTensor of domain tags [B] to [B, D]; its
    output is added to the timestep embedding of every branch whose ``domain`` is set
    (RefAny3D's Embedding(2, 256) -> Linear -> SiLU -> Linear).
    attention: the function joining branches (default :func:`grouped_attention`).
    shifters: optional Realiz3D domain shifters (adapters.DomainShifters), one per block, applied
    to branches that carry ``block_domains``. The bias variant is reduced once to a table of
    vectors [blocks, domains, D], so a shift costs one addition. ``trace``, when a list, receives
    (block, branch index, domain) for every shift applied (for tests and debugging).
    precompute_shifts: False keeps the shifters' own modules in the forward (no table), so the
    shifts are differentiable: what training the shifters needs.
    checkpointing: recompute each block's activations in the backward pass instead of keeping
    them (torch.utils.checkpoint per block): less memory for training, one more forward.
    """

    def __init__(self, model, domain_embedder: Optional[nn.Module] = None, attention=None,
                 shifters: Optional[nn.Module] = None, trace: Optional[list] = None, precompute_shifts: bool = True,
                 checkpointing: bool = False):
        self.layers: FluxLayers = flux_layers(model)
        self.domain_embedder = domain_embedder
        self.attention = attention or grouped_attention
        self.has_guidance = self.layers.has_guidance
        self.shifters, self.trace = shifters, trace
        self.shift_table = None
        self.checkpointing = checkpointing
        if shifters is not None:
            shifters.check_fits(self.layers)
            if shifters.cfg.variant == "bias" and precompute_shifts:
                self.shift_table = shifters.precompute().to(self.layers.device, self.dtype)

    @property
    def num_blocks(self) -> int:
        return self.layers.num_blocks

    @property
    def dtype(self) -> torch.dtype:
        return self.layers.dtype

    def time_embedding(self, branch: Branch, pooled: torch.Tensor) -> torch.Tensor:
        """[B, D]: timestep (+ guidance) + pooled text, plus the domain embedding of the branch."""
        if self.has_guidance and branch.guidance is None:
            raise ValueError(f"branch '{branch.name}': this model embeds guidance; give a guidance value")
        emb = self.layers.time_embedding(branch.timestep, branch.guidance, pooled)
        if branch.domain is not None:
            if self.domain_embedder is None:
                raise ValueError(f"branch '{branch.name}' has domain tag {branch.domain} but no domain embedder "
                                 "is attached")
            tags = torch.full((emb.shape[0],), branch.domain, dtype=torch.long, device=emb.device)
            emb = emb + self.domain_embedder(tags).to(emb.dtype)
        return emb

    @torch.no_grad()
    def __call__(self, branches: Sequence[Branch], group_mask: Optional[torch.Tensor], pooled: torch.Tensor,
                 outputs: Optional[Sequence[int]] = None, kv_cache: Optional[KVCache] = None) -> dict[int, torch.Tensor]:
        return self.forward(branches, group_mask, pooled, outputs, kv_cache)

    def forward(self, branches: Sequence[Branch], group_mask: Optional[torch.Tensor], pooled: torch.Tensor,
                outputs: Optional[Sequence[int]] = None, kv_cache: Optional[KVCache] = None,
                frozen_blocks: int = 0) -> dict[int, torch.Tensor]:
        """Run all blocks; return {branch index: output [B, N, out_channels]} for ``outputs``
        (default: every non-text branch). With a filled ``kv_cache`` the cached branches are not
        computed (their tokens are ignored) and their stored keys and values are used.

        frozen_blocks: the first ``frozen_blocks`` engine blocks (and the shifts before them) run
        under ``torch.no_grad()``: the backward pass stops at block ``frozen_blocks``, so those
        blocks' weights and adapters, their shifters and the input embedders get no gradient
        from this forward and cost no backward time (Realiz3D's layer-aware training)."""
        L = self.layers
        if not 0 <= frozen_blocks <= self.num_blocks:
            raise ValueError(f"frozen_blocks must be within [0, {self.num_blocks}] (got {frozen_blocks})")
        L.check_adapters({a for b in branches for a in b.adapters})
        if kv_cache is not None:
            kv_cache.check(group_mask, len(branches))
        skip = kv_cache.branches if kv_cache is not None and kv_cache.filled else set()
        with torch.no_grad() if frozen_blocks else contextlib.nullcontext():   # only frozen blocks read them
            xs = [None if i in skip else L.embed(b.tokens, b.is_text, b.adapters) for i, b in enumerate(branches)]
        tembs = self._time_embeddings(branches, pooled)
        ropes = [None if i in skip else L.rope(b.ids) for i, b in enumerate(branches)]
        blocks = ([(self._double_block, i) for i in range(L.num_double)]
                  + [(self._single_block, i) for i in range(L.num_single)])
        for layer, (run, block) in enumerate(blocks):
            frozen = layer < frozen_blocks
            with torch.no_grad() if frozen else contextlib.nullcontext():
                xs = self._shift(layer, branches, xs)
                kv = self._kv(kv_cache, layer)
                if self.checkpointing and kv is None and not frozen and torch.is_grad_enabled():
                    from torch.utils.checkpoint import checkpoint
                    xs = checkpoint(run, block, branches, xs, tembs, ropes, group_mask, None, use_reentrant=False)
                else:
                    xs = run(block, branches, xs, tembs, ropes, group_mask, kv)
        if kv_cache is not None:
            kv_cache.filled = True
        wanted = outputs if outputs is not None else [i for i, b in enumerate(branches) if not b.is_text]
        return {i: L.final(xs[i], tembs[i], branches[i].adapters) for i in wanted}

    def _shift(self, block: int, branches, xs):
        """Add each scheduled branch's domain shift before ``block``."""
        if self.shifters is None:
            if any(b.block_domains is not None for b in branches):
                raise ValueError("branches carry block_domains but the engine has no domain shifters")
            return xs
        out = list(xs)
        for i, (b, x) in enumerate(zip(branches, xs)):
            if b.block_domains is None or x is None:
                continue
            d = int(b.block_domains[block])
            if self.shift_table is not None:
                out[i] = x + self.shift_table[block, d]
            else:
                tags = torch.full((x.shape[0],), d, dtype=torch.long, device=x.device)
                out[i] = self.shifters.blocks[block](x, tags)
            if self.trace is not None:
                self.trace.append((block, i, d))
        return out

    @staticmethod
    def _kv(cache: Optional[KVCache], layer: int):
        """(branches to store, store of this layer) or None."""
        if cache is None:
            return None
        return cache.branches, cache.store.setdefault(layer, {}), cache.filled

    def _attend(self, qs, ks, vs, mask, kv):
        """Attention with cached branches' keys and values written or read."""
        if kv is not None:
            cached, store, filled = kv
            for i in cached:
                if filled:
                    ks[i], vs[i] = store[i]
                else:
                    store[i] = (ks[i], vs[i])
        return self.attention(qs, ks, vs, mask)

    def _time_embeddings(self, branches, pooled):
        """One embedding per distinct (timestep, guidance, domain): conditions share theirs."""
        cache, out = {}, []
        for b in branches:
            key = (tuple(b.timestep.tolist()), None if b.guidance is None else tuple(b.guidance.tolist()), b.domain)
            if key not in cache:
                cache[key] = self.time_embedding(b, pooled)
            out.append(cache[key])
        return out

    def _double_block(self, i, branches, xs, tembs, ropes, mask, kv=None):
        L = self.layers
        mods, qs, ks, vs = [], [], [], []
        for b, x, temb, rope in zip(branches, xs, tembs, ropes):
            if x is None:                       # read from the KV cache
                mods.append(None), qs.append(None), ks.append(None), vs.append(None)
                continue
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = L.double_modulation(i, temb, b.is_text,
                                                                                                 b.adapters)
            h = L.double_norm(i, x, b.is_text, False) * (1 + scale_msa[:, None]) + shift_msa[:, None]
            q, k, v = L.double_qkv(i, h, b.is_text, b.adapters)
            qs.append(L.apply_rope(q, rope)), ks.append(L.apply_rope(k, rope)), vs.append(v)
            mods.append((gate_msa, shift_mlp, scale_mlp, gate_mlp))
        attended = self._attend(qs, ks, vs, mask, kv)
        out = []
        for b, x, o, mod in zip(branches, xs, attended, mods):
            if x is None:
                out.append(None)
                continue
            gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
            o = o.flatten(2, 3).to(x.dtype)
            x = x + gate_msa.unsqueeze(1) * L.double_attn_out(i, o, b.is_text, b.adapters)
            h = L.double_norm(i, x, b.is_text, True) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            x = x + gate_mlp.unsqueeze(1) * L.double_mlp(i, h, b.is_text, b.adapters)
            out.append(_clip_fp16(x))
        return out

    def _single_block(self, i, branches, xs, tembs, ropes, mask, kv=None):
        L = self.layers
        gates, mlps, qs, ks, vs = [], [], [], [], []
        for b, x, temb, rope in zip(branches, xs, tembs, ropes):
            if x is None:
                gates.append(None), mlps.append(None), qs.append(None), ks.append(None), vs.append(None)
                continue
            shift, scale, gate = L.single_modulation(i, temb, b.adapters)
            h = L.single_norm(i, x) * (1 + scale[:, None]) + shift[:, None]
            q, k, v, mlp = L.single_qkv_mlp(i, h, b.adapters)
            mlps.append(mlp)
            qs.append(L.apply_rope(q, rope)), ks.append(L.apply_rope(k, rope)), vs.append(v)
            gates.append(gate)
        attended = self._attend(qs, ks, vs, mask, kv)
        out = []
        for b, x, o, mlp, gate in zip(branches, xs, attended, mlps, gates):
            if x is None:
                out.append(None)
                continue
            h = torch.cat([o.flatten(2, 3).to(x.dtype), mlp], dim=2)
            out.append(_clip_fp16(x + gate.unsqueeze(1) * L.single_out(i, h, b.adapters)))
        return out


def _clip_fp16(x: torch.Tensor) -> torch.Tensor:
    return x.clip(-65504, 65504) if x.dtype == torch.float16 else x
