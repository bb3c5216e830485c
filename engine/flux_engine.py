"""A Flux MM-DiT run as token branches (SPEC.md section 1), on any weight layout of engine.layers
(diffusers' FluxTransformer2DModel, or Black Forest Labs' layout as ComfyUI builds it).

The engine reuses the model's modules and weights and only re-orders the computation:
every branch gets its own modulation (AdaLN from its own timestep embedding), projections,
norms, RoPE and MLP; attention is joint over the branches a group mask allows. Nothing of the
model is modified, so one model serves plain and branched sampling (and the host's other nodes) alike.

Branches that share adapters, timestep, guidance, domain tag and shifter schedule run as one token
stream through every layer but attention (engine.branch_layout): RefAny3D's 19 branches at 8 views
are 5 streams, so a forward makes about a quarter of the layer calls (kernel launches on a GPU) a
per-branch forward makes. Attention still follows the group mask over the original branches. The
structure of a forward (streams, groups, masks, time-embedding keys) is computed on the host from
plain Python values, once per layout; nothing in a forward reads a tensor back to the host.
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Optional, Sequence

import torch
from torch import nn

from .attention import LAYOUT_ATTENTION, pick_attention, prepare_layout_attention
from .branch_layout import BranchLayout, HostMask, build_layout, host_mask, layout_key
from .branches import Branch
from .layers import FluxLayers, flux_layers

#: layouts kept per engine (one per structure: the conditioned and the black pass, cache filling...)
LAYOUT_CACHE_SIZE = 16


class KVCache:
    """Keys and values of branches that do not change across denoising steps (SPEC.md
    section 1, after OminiControl2): conditions at t = 0 that attend only to themselves and
    their pair. The first forward writes them; later forwards skip those branches entirely and
    read their keys and values. Exact only when the cached branches' mask rows contain cached
    branches alone; the engine checks that.

    Keys and values are kept per token stream, in the compute dtype, each in a storage of its
    own (never a view that would keep a layer's whole fused output alive). Size: blocks x 2 x
    cached tokens x hidden x dtype bytes per batch row; FLUX.1 (57 blocks, hidden 3072) with 8
    views of 512 px (16,384 condition tokens) in bf16: 10.7 GiB. :meth:`clear` frees it; the
    samplers clear their caches when a prompt ends.
    """

    def __init__(self, branches: Sequence[int]):
        self.branches = frozenset(branches)
        self.store: dict[int, dict[tuple, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.filled = False

    def check(self, mask, n: int) -> None:
        rows = host_mask(mask)
        if rows is None:
            raise ValueError("a KV cache needs a group mask in which cached branches see only cached branches")
        for i in sorted(self.branches):
            seen = {j for j in range(n) if rows[i][j]}
            if not seen <= self.branches:
                raise ValueError(f"cached branch {i} attends to branches {sorted(seen - self.branches)}, whose "
                                 "states change every step; its keys and values cannot be cached exactly")

    def clear(self) -> None:
        """Free the stored keys and values (the next forward fills the cache again)."""
        self.store.clear()
        self.filled = False

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.store.values() for kv in layer.values() for t in kv)

    def tensors(self) -> list[torch.Tensor]:
        return [t for layer in self.store.values() for kv in layer.values() for t in kv]


def _own(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype`` in a storage of its own: a view (v of a fused qkv or linear1 output)
    would keep the whole layer output alive as long as the cache."""
    t = t.to(dtype)
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or not t.is_contiguous():
        t = t.clone(memory_format=torch.contiguous_format)
    return t


def _cat(ts: list, dim: int = 1) -> torch.Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts, dim=dim)


class _Forward:
    """What every block of one forward shares: the layout, one representative branch per computed
    stream (its adapters, text flag and schedule are the stream's), their time embeddings and
    RoPE tables, the attention, the group mask for a per-branch attention function."""

    def __init__(self, layout: BranchLayout, reps, tembs, ropes, attention, mask, per_branch: bool):
        self.layout, self.reps, self.tembs, self.ropes = layout, reps, tembs, ropes
        self.attention, self.mask, self.per_branch = attention, mask, per_branch


class FluxEngine:
    """Branched forward of a Flux transformer.

    model: a diffusers ``FluxTransformer2DModel``, a BFL-layout Flux module (ComfyUI's
    ``diffusion_model``), or a :class:`engine.layers.FluxLayers` over either.
    domain_embedder: optional module mapping a LongTensor of domain tags [B] to [B, D]; its
    output is added to the timestep embedding of every branch whose ``domain`` is set
    (RefAny3D's Embedding(2, 256) -> Linear -> SiLU -> Linear).
    attention: 'auto' (default: the layout attention measured fastest on the device type, see
    engine.attention.AUTO_ATTENTION), 'grouped' (one SDPA per query-group shape), 'flex' (one
    FlexAttention call with a block mask), 'flex_eager', 'dense' (the reference), or a function
    with :func:`engine.attention.grouped_attention`'s per-branch contract (q, k, v lists, mask).
    shifters: optional Realiz3D domain shifters (adapters.DomainShifters), one per block, applied
    to branches that carry ``block_domains``. The bias variant is reduced once to a table of
    vectors [blocks, domains, D], so a shift costs one addition. ``trace``, when a list, receives
    (block, branch index, domain) for every shift applied (for tests and debugging).
    precompute_shifts: False keeps the shifters' own modules in the forward (no table), so the
    shifts are differentiable: what training the shifters needs.
    checkpointing: recompute each block's activations in the backward pass instead of keeping
    them (torch.utils.checkpoint per block): less memory for training, one more forward.
    batch_branches: run branches that share adapters, timestep, guidance, domain tag and
    schedule as one token stream (engine.branch_layout); False runs every branch on its own (the
    reference the batched forward is tested against).
    compile: torch.compile the block functions (off by default). Graphs are specialised per
    block and layout, so the first forward of a layout compiles (seconds per block) and later
    ones reuse them; with it, 'auto' attention is FlexAttention on CUDA.
    """

    def __init__(self, model, domain_embedder: Optional[nn.Module] = None, attention=None,
                 shifters: Optional[nn.Module] = None, trace: Optional[list] = None, precompute_shifts: bool = True,
                 checkpointing: bool = False, batch_branches: bool = True, compile: bool = False):
        self.layers: FluxLayers = flux_layers(model)
        self.domain_embedder = domain_embedder
        self.attention = attention if attention is not None else "auto"
        if not callable(self.attention):
            pick_attention(self.attention, "cpu")          # a bad name fails here, not mid-sampling
        self.has_guidance = self.layers.has_guidance
        self.shifters, self.trace = shifters, trace
        self.shift_table = None
        self.checkpointing = checkpointing
        self.batch_branches, self.compile = batch_branches, compile
        self._layouts: OrderedDict = OrderedDict()
        self._compiled = None
        #: set by training.fsdp.ShardedEngine (FSDP full fine-tuning): the forward and every block run
        #: through FSDP units, frozen blocks with autograd and a zero gradient; None: the engine as is
        self.sharded = None
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

    def layout(self, branches: Sequence[Branch], group_mask=None, kv_cache: Optional[KVCache] = None) -> BranchLayout:
        """The layout a forward of these branches runs (host data; kept for later forwards)."""
        return self._layout(branches, host_mask(group_mask), kv_cache)

    def _layout(self, branches, rows: HostMask, kv_cache: Optional[KVCache]) -> BranchLayout:
        cached = kv_cache.branches if kv_cache is not None else frozenset()
        key = layout_key(branches, rows, cached, kv_cache is not None and kv_cache.filled, self.batch_branches)
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = build_layout(key)
            while len(self._layouts) > LAYOUT_CACHE_SIZE:
                self._layouts.popitem(last=False)
        else:
            self._layouts.move_to_end(key)
        return layout

    def forward(self, branches: Sequence[Branch], group_mask: Optional[torch.Tensor], pooled: torch.Tensor,
                outputs: Optional[Sequence[int]] = None, kv_cache: Optional[KVCache] = None,
                frozen_blocks: int = 0) -> dict[int, torch.Tensor]:
        """Run all blocks; return {branch index: output [B, N, out_channels]} for ``outputs``
        (default: every computed non-text branch). With a filled ``kv_cache`` the cached branches are not
        computed (their tokens are ignored) and their stored keys and values are used.

        frozen_blocks: the first ``frozen_blocks`` engine blocks (and the shifts before them) run
        under ``torch.no_grad()``: the backward pass stops at block ``frozen_blocks``, so those
        blocks' weights and adapters, their shifters and the input embedders get no gradient
        from this forward and cost no backward time (Realiz3D's layer-aware training). On an
        FSDP-sharded engine (``self.sharded``, training.fsdp) they run with autograd behind a
        zero-gradient boundary instead: the same gradients, the same collectives on every process."""
        sharded = self.sharded
        if sharded is not None and not sharded.inside:
            return sharded.forward(branches, group_mask, pooled, outputs, kv_cache, frozen_blocks)
        L, n = self.layers, len(branches)
        if not 0 <= frozen_blocks <= self.num_blocks:
            raise ValueError(f"frozen_blocks must be within [0, {self.num_blocks}] (got {frozen_blocks})")
        L.check_adapters({a for b in branches for a in b.adapters})
        if self.shifters is None and any(b.block_domains is not None for b in branches):
            raise ValueError("branches carry block_domains but the engine has no domain shifters")
        rows = host_mask(group_mask)
        if rows is not None and (len(rows) != n or any(len(r) != n for r in rows)):
            raise ValueError(f"group mask is {len(rows)}x{len(rows[0]) if rows else 0} for {n} branches")
        if kv_cache is not None:
            kv_cache.check(rows, n)
        layout = self._layout(branches, rows, kv_cache)
        reps = [branches[s.members[0]] for s in layout.active]
        frozen_embed = frozen_blocks and sharded is None
        with torch.no_grad() if frozen_embed else contextlib.nullcontext():   # only frozen blocks read them
            xs = [L.embed(_cat([branches[m].tokens for m in s.members]), b.is_text, b.adapters)
                  for s, b in zip(layout.active, reps)]
        tembs = self._time_embeddings(reps, pooled)
        ropes = [L.rope(_cat([branches[m].ids for m in s.members], dim=0)) for s in layout.active]
        if callable(self.attention):
            attention, mask = self.attention, None if rows is None else torch.tensor(rows, dtype=torch.bool)
        else:
            name = pick_attention(self.attention, L.device.type, self.compile)
            prepare_layout_attention(name, layout, L.device)
            attention, mask = LAYOUT_ATTENTION[name], None
        st = _Forward(layout, reps, tembs, ropes, attention, mask, callable(self.attention))
        double, single = self._block_functions()
        blocks = [(double, i) for i in range(L.num_double)] + [(single, i) for i in range(L.num_single)]
        if sharded is not None:
            xs = sharded.run_blocks(st, xs, blocks, frozen_blocks)
        else:
            with self._compile_limits():
                for layer, (run, block) in enumerate(blocks):
                    frozen = layer < frozen_blocks
                    with torch.no_grad() if frozen else contextlib.nullcontext():
                        xs = self._shift(layer, st, xs)
                        kv = None if kv_cache is None else (kv_cache.store.setdefault(layer, {}), kv_cache.filled)
                        if self.checkpointing and kv is None and not frozen and torch.is_grad_enabled():
                            from torch.utils.checkpoint import checkpoint
                            xs = checkpoint(run, block, st, xs, None, use_reentrant=False)
                        else:
                            xs = run(block, st, xs, kv)
        if kv_cache is not None:
            kv_cache.filled = True
        computed = set(layout.query_branches)
        wanted = list(outputs) if outputs is not None else [i for i, b in enumerate(branches)
                                                            if not b.is_text and i in computed]
        return self._final(layout, reps, xs, tembs, wanted)

    def _final(self, layout: BranchLayout, reps, xs, tembs, wanted) -> dict[int, torch.Tensor]:
        L, out, want = self.layers, {}, set(wanted)
        for s, b, x, temb in zip(layout.active, reps, xs, tembs):
            here = [m for m in s.members if m in want]
            if len(here) == len(s.members):
                for m, y in zip(s.members, L.final(x, temb, b.adapters).split(list(s.lengths), dim=1)):
                    out[m] = y
                continue
            start = 0
            for m, length in zip(s.members, s.lengths):
                if m in want:
                    out[m] = L.final(x[:, start:start + length], temb, b.adapters)
                start += length
        missing = want - set(out)
        if missing:
            raise ValueError(f"branches {sorted(missing)} are read from the KV cache: they have no output")
        return {i: out[i] for i in wanted}

    def _block_functions(self):
        if not self.compile:
            return self._double_block, self._single_block
        if self._compiled is None:
            self._compiled = (torch.compile(self._double_block), torch.compile(self._single_block))
        return self._compiled

    def _compile_limits(self):
        """Compiled graphs are specialised per block (and layout): allow that many recompiles."""
        if not self.compile:
            return contextlib.nullcontext()
        import torch._dynamo
        return torch._dynamo.config.patch(recompile_limit=max(8, 4 * self.num_blocks + 8))

    def _shift(self, block: int, st: _Forward, xs):
        """Add each scheduled stream's domain shift before ``block``."""
        if self.shifters is None:
            return xs
        out = list(xs)
        for k, (s, b, x) in enumerate(zip(st.layout.active, st.reps, xs)):
            if b.block_domains is None:
                continue
            d = int(b.block_domains[block])
            if self.shift_table is not None:
                out[k] = x + self.shift_table[block, d]
            else:
                tags = torch.full((x.shape[0],), d, dtype=torch.long, device=x.device)
                out[k] = self.shifters.blocks[block](x, tags)
            if self.trace is not None:
                self.trace.extend((block, m, d) for m in s.members)
        return out

    def _attend(self, st: _Forward, qs, ks, vs, kv):
        """Attention of the computed streams' queries over every stream's keys (cached ones
        written to or read from ``kv``); one output per computed stream."""
        layout, dtype = st.layout, self.dtype
        computed = {s.members: (k, v) for s, k, v in zip(layout.active, ks, vs)}
        if kv is not None:
            store, filled = kv
            if not filled:
                for s in layout.active:
                    if s.cached:
                        k, v = computed[s.members]
                        store[s.members] = (_own(k, dtype), _own(v, dtype))
        k_all, v_all = [], []
        for s in layout.streams:
            if s.members in computed:
                k, v = computed[s.members]
            else:
                if s.members not in store:
                    raise ValueError(f"the KV cache holds no keys for branches {list(s.members)}: it was filled "
                                     "with another branch layout")
                k, v = store[s.members]
            k_all.append(k), v_all.append(v)
        if st.per_branch:
            return self._per_branch_attention(st, qs, k_all, v_all)
        o = st.attention(_cat(qs), _cat(k_all), _cat(v_all), layout)
        return list(o.split([s.length for s in layout.active], dim=1))

    def _per_branch_attention(self, st: _Forward, qs, k_all, v_all):
        """A per-branch attention function (grouped_attention's contract) over the streams."""
        layout = st.layout
        n = layout.n
        q, k, v = [None] * n, [None] * n, [None] * n
        for s, kk, vv in zip(layout.streams, k_all, v_all):
            for m, a, b in zip(s.members, kk.split(list(s.lengths), 1), vv.split(list(s.lengths), 1)):
                k[m], v[m] = a, b
        for s, qq in zip(layout.active, qs):
            for m, a in zip(s.members, qq.split(list(s.lengths), 1)):
                q[m] = a
        out = st.attention(q, k, v, st.mask)
        return [_cat([out[m] for m in s.members]) for s in layout.active]

    def _time_embeddings(self, reps, pooled):
        """One embedding per distinct (timestep, guidance, domain); branches share a timestep when
        they hold the same tensor, so the key is built from identities, never from values."""
        cache, out = {}, []
        for b in reps:
            key = (id(b.timestep), None if b.guidance is None else id(b.guidance), b.domain)
            if key not in cache:
                cache[key] = self.time_embedding(b, pooled)
            out.append(cache[key])
        return out

    def _double_block(self, i, st: _Forward, xs, kv=None):
        L = self.layers
        mods, qs, ks, vs = [], [], [], []
        for b, x, temb, rope in zip(st.reps, xs, st.tembs, st.ropes):
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = L.double_modulation(i, temb, b.is_text,
                                                                                                 b.adapters)
            h = L.double_norm(i, x, b.is_text, False) * (1 + scale_msa[:, None]) + shift_msa[:, None]
            q, k, v = L.double_qkv(i, h, b.is_text, b.adapters)
            qs.append(L.apply_rope(q, rope)), ks.append(L.apply_rope(k, rope)), vs.append(v)
            mods.append((gate_msa, shift_mlp, scale_mlp, gate_mlp))
        attended = self._attend(st, qs, ks, vs, kv)
        out = []
        for b, x, o, mod in zip(st.reps, xs, attended, mods):
            gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
            o = o.flatten(2, 3).to(x.dtype)
            x = x + gate_msa.unsqueeze(1) * L.double_attn_out(i, o, b.is_text, b.adapters)
            h = L.double_norm(i, x, b.is_text, True) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            x = x + gate_mlp.unsqueeze(1) * L.double_mlp(i, h, b.is_text, b.adapters)
            out.append(_clip_fp16(x))
        return out

    def _single_block(self, i, st: _Forward, xs, kv=None):
        L = self.layers
        gates, mlps, qs, ks, vs = [], [], [], [], []
        for b, x, temb, rope in zip(st.reps, xs, st.tembs, st.ropes):
            shift, scale, gate = L.single_modulation(i, temb, b.adapters)
            h = L.single_norm(i, x) * (1 + scale[:, None]) + shift[:, None]
            q, k, v, mlp = L.single_qkv_mlp(i, h, b.adapters)
            mlps.append(mlp)
            qs.append(L.apply_rope(q, rope)), ks.append(L.apply_rope(k, rope)), vs.append(v)
            gates.append(gate)
        attended = self._attend(st, qs, ks, vs, kv)
        out = []
        for b, x, o, mlp, gate in zip(st.reps, xs, attended, mlps, gates):
            h = torch.cat([o.flatten(2, 3).to(x.dtype), mlp], dim=2)
            out.append(_clip_fp16(x + gate.unsqueeze(1) * L.single_out(i, h, b.adapters)))
        return out


def _clip_fp16(x: torch.Tensor) -> torch.Tensor:
    return x.clip(-65504, 65504) if x.dtype == torch.float16 else x
