"""The host-side structure of one branched forward: which branches run as one token stream,
where each branch's tokens sit in the joint attention sequence, and the query groups of the
group mask. Built from plain Python values only (shapes, adapter names, domain tags, the
identity of the timestep and guidance tensors, a group mask read once per mask object), so a
forward never waits for the device to tell the host anything.

Why streams: RefAny3D at 8 views has 19 branches, but only 5 kinds of branch (text, target RGB,
target point map, RGB views, point-map views); all the views of a kind share adapters,
timestep, guidance and domain tag. Every layer but attention is token-wise (linears, LoRAs,
LayerNorm, RMSNorm, RoPE, AdaLN applied per token from one time embedding), so the views of a
kind can run as one token stream: one call per layer instead of eight, with the same result per
token. Attention still follows the group mask over the original branches.

Which branches merge: those with the same ``is_text``, adapters, domain tag, shifter schedule
(``block_domains``), KV-cache membership, batch and channel sizes, and *the same timestep and
guidance tensors* (the same objects: the layout builders hand one tensor to every branch that
shares it). Comparing tensor identities rather than values is what keeps the host from reading
the device; branches with equal but separate tensors simply run as separate streams.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary

from .branches import Branch

HostMask = Optional[tuple[tuple[bool, ...], ...]]

#: group-mask tensor -> (its version counter, its rows as Python bools): read once per mask object
_HOST_MASKS = WeakIdKeyDictionary()


def host_mask(mask) -> HostMask:
    """The group mask as nested tuples of bools (None stays None). A tensor is read once: later
    calls with the same, unmodified tensor (its in-place version counter unchanged) reuse the
    rows, so a mask kept on the GPU costs one transfer per sampling run, not one per forward.
    Inference tensors have no version counter: see below."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        return tuple(tuple(bool(x) for x in row) for row in mask)
    if mask.is_inference():
        # no version counter (ComfyUI runs its nodes in inference mode): a CPU mask is read again
        # (no device to wait for), a device mask is taken as unchanged while it lives
        if mask.device.type == "cpu":
            return tuple(tuple(bool(x) for x in row) for row in mask.tolist())
        version = "inference"
    else:
        version = mask._version
    hit = _HOST_MASKS.get(mask)
    if hit is not None and hit[0] == version:
        return hit[1]
    rows = tuple(tuple(bool(x) for x in row) for row in mask.tolist())
    _HOST_MASKS[mask] = (version, rows)
    return rows


def stream_key(b: Branch, cached: bool) -> tuple:
    """Branches with equal keys run as one stream (see the module docstring)."""
    return (b.is_text, tuple(b.adapters), id(b.timestep), None if b.guidance is None else id(b.guidance), b.domain,
            None if b.block_domains is None else tuple(b.block_domains), cached, b.tokens.shape[0],
            b.tokens.shape[2], b.tokens.dtype, b.tokens.device)


def partition(branches: Sequence[Branch], cached: frozenset, batch: bool) -> tuple[tuple[int, ...], ...]:
    """Branch indices per stream, streams ordered by their first branch; ``batch=False``: one
    stream per branch (the per-branch reference)."""
    if not batch:
        return tuple((i,) for i in range(len(branches)))
    streams: dict[tuple, list[int]] = {}
    for i, b in enumerate(branches):
        streams.setdefault(stream_key(b, i in cached), []).append(i)
    return tuple(tuple(m) for m in streams.values())


@dataclass(frozen=True)
class Stream:
    """Branches run as one token sequence: members in order, each ``lengths[k]`` tokens."""
    members: tuple[int, ...]
    lengths: tuple[int, ...]
    cached: bool

    @property
    def length(self) -> int:
        return sum(self.lengths)


@dataclass(frozen=True)
class Bucket:
    """Query groups of equal shape that run as one attention call: ``queries[g]`` and
    ``keys[g]`` are token ranges [(start, stop), ...] in the query and key sequences."""
    queries: tuple[tuple[tuple[int, int], ...], ...]
    keys: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def contiguous(self) -> bool:
        return len(self.queries) == 1 and len(self.queries[0]) == 1 and len(self.keys[0]) == 1


def _runs(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted ranges with touching ones merged."""
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and out[-1][1] == a:
            out[-1][1] = b
        else:
            out.append([a, b])
    return tuple((a, b) for a, b in out)


class BranchLayout:
    """Streams, token positions and attention groups of one forward (host data only).

    The key sequence holds every stream in order; the query sequence holds the streams computed
    in this forward (all of them, or all but the KV-cached ones once the cache is filled). The
    device tensors an attention backend needs (gather indices, FlexAttention's block mask) are
    built by :meth:`device_data` once per layout and device and kept here.
    """

    def __init__(self, streams: Sequence[Stream], n_branches: int, rows: HostMask, skip_cached: bool):
        self.streams = tuple(streams)
        self.n = n_branches
        self.rows = rows
        self.active = tuple(s for s in self.streams if not (skip_cached and s.cached))
        self.key_pos, self.key_len = _spans(self.streams)
        self.query_pos, self.query_len = _spans(self.active)
        self.query_branches = [m for s in self.active for m in s.members]
        self.groups = self._groups(rows)
        self._device: dict = {}

    def _groups(self, rows: HostMask) -> list[tuple[list[int], list[int]]]:
        """[(query branches, key branches)], one per distinct mask row among the query branches."""
        by_row: dict[tuple, list[int]] = {}
        for i in self.query_branches:
            row = (True,) * self.n if rows is None else rows[i]
            by_row.setdefault(row, []).append(i)
        out = []
        for row, members in by_row.items():
            keys = [j for j, ok in enumerate(row) if ok]
            if not keys:
                raise ValueError(f"branches {members} may attend to no branch: every mask row needs a True")
            out.append((members, keys))
        return out

    def buckets(self, max_key_tokens: int) -> list[Bucket]:
        """Groups of equal (query, key) token counts stacked into one call each, as long as the
        keys they gather stay within ``max_key_tokens`` (a bound on the extra memory)."""
        shaped: dict[tuple[int, int], list[tuple]] = {}
        for members, keys in self.groups:
            q = _runs([self.query_pos[i] for i in members])
            k = _runs([self.key_pos[j] for j in keys])
            nq, nk = sum(b - a for a, b in q), sum(b - a for a, b in k)
            shaped.setdefault((nq, nk), []).append((q, k))
        out = []
        for (nq, nk), items in shaped.items():
            per = max(1, max_key_tokens // max(nk, 1))
            for start in range(0, len(items), per):
                chunk = items[start:start + per]
                out.append(Bucket(tuple(q for q, _ in chunk), tuple(k for _, k in chunk)))
        return out

    def device_data(self, key: str, device, build):
        """``build()``'s result, made once per (key, device) and kept with the layout."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:        # 'cuda' and 'cuda:0' are one device
            device = torch.device("cuda", torch.cuda.current_device())
        k = (key, str(device))
        if k not in self._device:
            self._device[k] = build()
        return self._device[k]

    def segments(self, which: str) -> list[int]:
        """Branch index of every token of the query or key sequence."""
        pos = self.query_pos if which == "query" else self.key_pos
        out = [0] * (self.query_len if which == "query" else self.key_len)
        for i, (a, b) in pos.items():
            out[a:b] = [i] * (b - a)
        return out


def layout_key(branches: Sequence[Branch], rows: HostMask, cached: frozenset, skip_cached: bool,
               batch: bool) -> tuple:
    """Everything a :class:`BranchLayout` depends on (host values): equal keys, equal layouts,
    so a caller keeps one layout per key across denoising steps."""
    parts = partition(branches, cached, batch)
    streams = tuple((m, tuple(branches[i].length for i in m), m[0] in cached) for m in parts)
    return streams, rows, skip_cached, len(branches)


def build_layout(key: tuple) -> BranchLayout:
    streams, rows, skip_cached, n = key
    return BranchLayout([Stream(*s) for s in streams], n, rows, skip_cached)


def _spans(streams) -> tuple[dict[int, tuple[int, int]], int]:
    """({branch: (start, end)} of each member's tokens in the streams laid end to end, total length)."""
    spans, pos = {}, 0
    for s in streams:
        for m, n in zip(s.members, s.lengths):
            spans[m] = (pos, pos + n)
            pos += n
    return spans, pos
