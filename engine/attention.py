"""Joint attention over token branches under a group mask, without a dense float mask.

A group mask M [n_branches, n_branches] (bool) says that the queries of branch i may attend to
the keys of branch j. Branches whose rows are equal form a query group; each group runs one
plain scaled-dot-product attention over the keys it may see, gathered once. No [T, T] mask is
materialised (with 2 x 8 RefAny3D views at 512 px that would be ~19k x 19k), and masked-out
blocks cost no FLOPs. :func:`dense_masked_attention` is the reference it must equal.

The engine itself calls the *layout* forms below: q, k, v are the joint query and key sequences
of a :class:`engine.branch_layout.BranchLayout` ([B, T, H, D], every token stream concatenated),
whose host-side groups say which token ranges attend to which. :func:`grouped_layout_attention`
runs one SDPA per group shape (groups of equal shape, such as RefAny3D's 8 views, stacked into one
call over gathered keys); :func:`flex_layout_attention` runs one FlexAttention call with a block
mask built once per layout. Which one 'auto' takes is decided per device type by measurement
(:data:`AUTO_ATTENTION`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .branch_layout import BranchLayout, host_mask

#: the layout attention 'auto' runs, per device type, and the measurement that chose it
#: (benchmarks/engine.py, one thread; benchmarks/gpu_engine_check.py on a GPU).
AUTO_ATTENTION = {
    # RefAny3D at 8 views x 512 px, 4 heads x 64 (18,944 tokens), CPU, 1 thread, one call
    # (benchmarks/results/engine.json, "layout_attention"): grouped 7.39 s; FlexAttention compiled
    # 4.69 s but 45 s and ~3.4 GB for its first call, again for every new shape (and eager once
    # torch.compile's recompile limit is reached); eager 72.6 s and 17.8 GB; dense mask 8.77 s.
    # Grouped: no compile per shape, and within 1.6x of compiled Flex when running.
    "cpu": "grouped",
    # not measured yet (no GPU lent so far): benchmarks/gpu_engine_check.py times both; grouped
    # until it says otherwise. Under compile=True the engine takes FlexAttention on CUDA (the
    # fused kernel exists only compiled).
    "cuda": "grouped",
}


def query_groups(mask: torch.Tensor) -> list[tuple[list[int], list[int]]]:
    """[(query branch indices, key branch indices)] with one entry per distinct mask row."""
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(host_mask(mask)):
        groups.setdefault(tuple(row), []).append(i)
    return [(members, [j for j, ok in enumerate(row) if ok]) for row, members in groups.items()]


def grouped_attention(q: Sequence[torch.Tensor], k: Sequence[torch.Tensor], v: Sequence[torch.Tensor],
                      mask: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """Per-branch q, k, v [B, N_i, H, D] -> per-branch attention outputs [B, N_i, H, D].

    mask: bool [n, n] (None: every branch sees every branch). A branch whose q is None only
    provides keys and values (a condition read from the KV cache); its output is None. A query
    row with no allowed key is an error: softmax over nothing is undefined.
    """
    n = len(q)
    if mask is None:
        mask = torch.ones(n, n, dtype=torch.bool)
    if mask.shape != (n, n):
        raise ValueError(f"group mask is {tuple(mask.shape)} for {n} branches")
    out: list[Optional[torch.Tensor]] = [None] * n
    for members, keys in query_groups(mask):
        members = [i for i in members if q[i] is not None]
        if not members:
            continue
        if not keys:
            raise ValueError(f"branches {members} may attend to no branch: every mask row needs a True")
        qq = _cat([q[i] for i in members])
        kk, vv = _cat([k[j] for j in keys]), _cat([v[j] for j in keys])
        o = F.scaled_dot_product_attention(qq.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2))
        o = o.transpose(1, 2)
        start = 0
        for i in members:
            out[i] = o[:, start:start + q[i].shape[1]]
            start += q[i].shape[1]
    return out


def block_sparse_attention(q: Sequence[torch.Tensor], k: Sequence[torch.Tensor], v: Sequence[torch.Tensor],
                           mask: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """The block-sparse alternative (benchmarked against :func:`grouped_attention`): each query
    branch visits only its allowed key blocks in place, merging them with an online softmax, so
    nothing is gathered or copied, at the price of unfused matmul/softmax steps. Same contract."""
    n = len(q)
    rows = host_mask(mask) if mask is not None else [[True] * n] * n
    out = []
    for i in range(n):
        if q[i] is None:
            out.append(None)
            continue
        qi = q[i].transpose(1, 2) * q[i].shape[-1] ** -0.5          # [B, H, Nq, D]
        acc, norm, peak = None, None, None
        for j in [j for j, ok in enumerate(rows[i]) if ok]:
            scores = qi @ k[j].transpose(1, 2).transpose(-1, -2)     # [B, H, Nq, Nk]
            block_peak = scores.amax(-1, keepdim=True)
            new_peak = block_peak if peak is None else torch.maximum(peak, block_peak)
            w = torch.exp(scores - new_peak)
            part = w @ v[j].transpose(1, 2)
            if acc is None:
                acc, norm = part, w.sum(-1, keepdim=True)
            else:
                rescale = torch.exp(peak - new_peak)
                acc, norm = acc * rescale + part, norm * rescale + w.sum(-1, keepdim=True)
            peak = new_peak
        if acc is None:
            raise ValueError(f"branch {i} may attend to no branch: every mask row needs a True")
        out.append((acc / norm).transpose(1, 2))
    return out


def dense_mask(lengths: Sequence[int], mask: torch.Tensor, device=None) -> torch.Tensor:
    """The [T, T] boolean token mask that a group mask stands for (reference and benchmarks)."""
    idx = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(list(lengths)))
    return mask.to(device)[idx][:, idx]


def dense_masked_attention(q, k, v, mask: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """Reference: one SDPA over all tokens with a dense [T, T] mask. Same contract as
    :func:`grouped_attention`."""
    lengths = [t.shape[1] for t in q]
    qq, kk, vv = (_cat(list(t)).transpose(1, 2) for t in (q, k, v))
    m = None if mask is None else dense_mask(lengths, mask, qq.device)
    o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=m).transpose(1, 2)
    return list(o.split(lengths, dim=1))


def _cat(ts: list[torch.Tensor]) -> torch.Tensor:
    return ts[0] if len(ts) == 1 else torch.cat(ts, dim=1)


# -- the engine's form: joint sequences of a BranchLayout -----------------------------------------

def _sdpa(q, k, v):
    """[..., T, H, D] in and out (SDPA wants heads before tokens)."""
    return F.scaled_dot_product_attention(q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2)).transpose(-3, -2)


def _bucket_plan(layout: BranchLayout, device) -> list:
    """Per bucket: ('slice', q range, k range) or ('gather', q index, k index, groups, nq, nk)."""
    plan = []
    for b in layout.buckets(max_key_tokens=max(layout.key_len, 1)):
        if b.contiguous:
            plan.append(("slice", b.queries[0][0], b.keys[0][0]))
            continue
        qi = [t for g in b.queries for a, e in g for t in range(a, e)]
        ki = [t for g in b.keys for a, e in g for t in range(a, e)]
        G = len(b.queries)
        plan.append(("gather", torch.tensor(qi, device=device), torch.tensor(ki, device=device), G,
                     len(qi) // G, len(ki) // G))
    return plan


def grouped_layout_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BranchLayout) -> torch.Tensor:
    """q [B, Tq, H, D], k, v [B, Tk, H, D] (the layout's query and key sequences) -> [B, Tq, H, D]."""
    plan = layout.device_data("grouped", q.device, lambda: _bucket_plan(layout, q.device))
    if len(plan) == 1 and plan[0][0] == "slice" and plan[0][1] == (0, q.shape[1]) and plan[0][2] == (0, k.shape[1]):
        return _sdpa(q, k, v)                       # one group over everything: no copies at all
    out = q.new_empty(q.shape)
    B, _, H, D = q.shape
    for step in plan:
        if step[0] == "slice":
            (a, b), (c, d) = step[1], step[2]
            out[:, a:b] = _sdpa(q[:, a:b], k[:, c:d], v[:, c:d])
        else:
            _, qi, ki, G, nq, nk = step
            # groups stacked on the batch dimension: [B * G, N, H, D]
            qq = q.index_select(1, qi).reshape(B * G, nq, H, D)
            kk, vv = (t.index_select(1, ki).reshape(B * G, nk, H, D) for t in (k, v))
            out.index_copy_(1, qi, _sdpa(qq, kk, vv).reshape(B, G * nq, H, D))
    return out


def _block_mask(layout: BranchLayout, device):
    from torch.nn.attention.flex_attention import create_block_mask
    if layout.rows is None and layout.query_len == layout.key_len:
        return None
    rows = layout.rows if layout.rows is not None else [[True] * layout.n] * layout.n
    m = torch.tensor(rows, dtype=torch.bool, device=device)
    q_seg = torch.tensor(layout.segments("query"), device=device)
    k_seg = torch.tensor(layout.segments("key"), device=device)

    def mask_mod(b, h, qi, ki):
        return m[q_seg[qi], k_seg[ki]]
    return create_block_mask(mask_mod, None, None, layout.query_len, layout.key_len, device=device)


_COMPILED_FLEX = None


def flex_layout_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BranchLayout,
                          compiled: bool = True) -> torch.Tensor:
    """The same contract as :func:`grouped_layout_attention`, in one FlexAttention call whose
    block mask (from the layout's group mask and branch lengths) is built once per layout.
    compiled: run FlexAttention's fused kernel (torch.compile of flex_attention, compiled once
    per shape); False runs its eager form, which materialises the scores (tests). Inside a
    compiled engine block the call is traced into that block's graph either way."""
    global _COMPILED_FLEX
    from torch.nn.attention.flex_attention import flex_attention
    bm = layout.device_data("flex", q.device, lambda: _block_mask(layout, q.device))
    fn = flex_attention
    if compiled and not torch.compiler.is_compiling():
        if _COMPILED_FLEX is None:
            _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
        fn = _COMPILED_FLEX
    o = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=bm)
    return o.transpose(1, 2)


def flex_eager_layout_attention(q, k, v, layout):
    """:func:`flex_layout_attention` without compiling FlexAttention (its reference form)."""
    return flex_layout_attention(q, k, v, layout, compiled=False)


def dense_layout_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: BranchLayout) -> torch.Tensor:
    """Reference: one SDPA with the dense [Tq, Tk] token mask of the layout."""
    def build():
        rows = layout.rows if layout.rows is not None else [[True] * layout.n] * layout.n
        m = torch.tensor(rows, dtype=torch.bool)
        qs, ks = torch.tensor(layout.segments("query")), torch.tensor(layout.segments("key"))
        return m[qs][:, ks].to(q.device)
    m = layout.device_data("dense", q.device, build)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=m)
    return o.transpose(1, 2)


#: the engine's attention choices by name (layout form)
LAYOUT_ATTENTION = {"grouped": grouped_layout_attention, "flex": flex_layout_attention,
                    "flex_eager": flex_eager_layout_attention, "dense": dense_layout_attention}


def prepare_layout_attention(name: str, layout: BranchLayout, device) -> None:
    """Build the device data (gather indices, block mask, dense mask) the named layout attention
    reads, before the blocks run (so none of it is built inside a compiled block)."""
    device = torch.device(device)
    if name == "grouped":
        layout.device_data("grouped", device, lambda: _bucket_plan(layout, device))
    elif name in ("flex", "flex_eager"):
        layout.device_data("flex", device, lambda: _block_mask(layout, device))


def pick_attention(name: str, device_type: str, compiled: bool = False) -> str:
    """'auto' -> the measured choice for the device type (:data:`AUTO_ATTENTION`); others as named."""
    if name != "auto":
        if name not in LAYOUT_ATTENTION:
            raise ValueError(f"attention must be 'auto' or one of {sorted(LAYOUT_ATTENTION)} (got {name!r})")
        return name
    if compiled and device_type == "cuda":
        return "flex"
    return AUTO_ATTENTION.get(device_type, "grouped")
