"""The order in which samples are drawn, derived from the seed and the step alone.

Each step draws ``global_batch`` samples: the source of each (real or synthetic) from a
generator seeded with (seed, step); the item from that source's current epoch permutation,
seeded with (seed, source, epoch), walked by a cursor. The cursors are the whole state: a
checkpoint stores them, so a resumed run draws exactly what an uninterrupted one would. With
several processes, every process computes the same global draw and takes its own slice, so
the shards are disjoint.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..renderers.errors import InputError
from .data import BadSample, Sample


def seed_of(*parts: int) -> int:
    """A 63-bit seed from integers (for torch.Generator.manual_seed)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class DataOrder:
    """sizes: {source: number of items}; ratios: {source: probability of drawing from it}."""

    def __init__(self, seed: int, sizes: dict, ratios: dict):
        self.seed = seed
        self.sources = sorted(s for s in sizes if ratios.get(s, 0) > 0)
        if not self.sources:
            raise ValueError("no source can be drawn")
        self.sizes = dict(sizes)
        total = sum(ratios[s] for s in self.sources)
        self.cumulative = np.cumsum([ratios[s] / total for s in self.sources])
        self.step = 0
        self.cursor = {s: [0, 0] for s in self.sources}       # source -> [epoch, position]
        self._perm: dict = {}

    def permutation(self, source: str, epoch: int) -> np.ndarray:
        key = (source, epoch)
        if key not in self._perm:
            sid = self.sources.index(source)
            self._perm = {k: v for k, v in self._perm.items() if k[0] != source}
            self._perm[key] = np.random.default_rng([self.seed, 0xDA7A, sid, epoch]).permutation(self.sizes[source])
        return self._perm[key]

    def next(self, n: int) -> list[tuple[str, int]]:
        """The next step's ``n`` draws as (source, item index)."""
        rng = np.random.default_rng([self.seed, 0x50C, self.step])
        out = []
        for _ in range(n):
            k = int(np.searchsorted(self.cumulative, rng.random(), side="right"))
            source = self.sources[min(k, len(self.sources) - 1)]
            epoch, pos = self.cursor[source]
            out.append((source, int(self.permutation(source, epoch)[pos])))
            pos += 1
            if pos == self.sizes[source]:
                epoch, pos = epoch + 1, 0
            self.cursor[source] = [epoch, pos]
        self.step += 1
        return out

    def state_dict(self) -> dict:
        return {"step": self.step, "cursor": {s: list(c) for s, c in self.cursor.items()},
                "sizes": dict(self.sizes)}

    def load_state_dict(self, state: dict) -> None:
        if dict(state["sizes"]) != self.sizes:
            raise InputError("resume", f"the checkpoint was trained on datasets of sizes {state['sizes']}, these "
                                       f"have {self.sizes}; resuming would not reproduce the sample order. Use the "
                                       "same data folders.")
        self.step = int(state["step"])
        self.cursor = {s: list(c) for s, c in state["cursor"].items()}


class SampleLoader:
    """Loads drawn samples; a sample that fails to decode follows data.on_bad_sample: stop raises
    an InputError naming the dataset and the path, skip logs the path, leaves the item out from
    then on and takes the next item of the same source (a local choice that does not move the
    shared cursors)."""

    def __init__(self, datasets: dict, policy: str, log: Callable[[str], None]):
        self.datasets, self.policy, self.log = datasets, policy, log
        self.bad: dict = {s: set() for s in datasets}

    def load(self, source: str, index: int) -> Sample:
        ds = self.datasets[source]
        for attempt in range(len(ds)):
            i = (index + attempt) % len(ds)
            if i in self.bad[source]:
                continue
            try:
                return ds.load(i)
            except BadSample as err:
                if self.policy == "stop":
                    raise InputError(ds.key, f"bad sample {err.path}: {err.reason} (set data.on_bad_sample: skip "
                                             "to leave such samples out).") from None
                self.bad[source].add(i)
                self.log(f"skipping bad sample {err.path}: {err.reason}")
        raise InputError(ds.key, "every sample of this dataset turned out bad; see the log for their paths.")
