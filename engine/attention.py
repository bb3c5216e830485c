"""Joint attention over token branches under a group mask, without a dense float mask.

A group mask M [n_branches, n_branches] (bool) says that the queries of branch i may attend to
the keys of branch j. Branches whose rows are equal form a query group; each group runs one
plain scaled-dot-product attention over the keys it may see, gathered once. No [T, T] mask is
materialised (with 2 x 8 RefAny3D views at 512 px that would be ~19k x 19k), and masked-out
blocks cost no FLOPs. :func:`dense_masked_attention` is the reference it must equal.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def query_groups(mask: torch.Tensor) -> list[tuple[list[int], list[int]]]:
    """[(query branch indices, key branch indices)] with one entry per distinct mask row."""
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(mask.tolist()):
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
    for members, keys in query_groups(mask.cpu()):
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
    mask = torch.ones(n, n, dtype=torch.bool) if mask is None else mask.cpu()
    out = []
    for i in range(n):
        if q[i] is None:
            out.append(None)
            continue
        qi = q[i].transpose(1, 2) * q[i].shape[-1] ** -0.5          # [B, H, Nq, D]
        acc, norm, peak = None, None, None
        for j in torch.nonzero(mask[i]).flatten().tolist():
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
