"""Domain shifters inside a host's own sampler: block-replace patches for a BFL-layout Flux.

ComfyUI's Flux forward looks up ``transformer_options["patches_replace"]["dit"][("double_block",
i)]`` (and ``("single_block", i)``) and, when present, calls ``patch(args, {"original_block":
fn})`` with ``args`` holding the block's inputs (``img``, ``txt``, ``vec``, ``pe``, ...). A
Realiz3D shift is an addition to the image tokens before a block, so each patch adds its
block's shift and calls the original block: KSampler and SamplerCustomAdvanced then sample in
the real or synthetic domain, or under a domain schedule, with the host's own samplers, CFG and
memory management. In single blocks the stream is text then image tokens; only the image part
is shifted (its start is the text length seen by the double blocks of the same forward).

The step of a schedule is read from the sigmas the host puts in ``transformer_options``
(``sigmas``: the current one, ``sample_sigmas``: the whole schedule); without them every
forward counts as step 0 of 1 (exact for schedules that do not depend on the step).
"""
from __future__ import annotations

from typing import Optional

import torch

from .domain_schedule import DomainSchedule, make_schedule
from .domain_shifter import DomainShifters

TEXT_LENGTH_KEY = "realiz3d_text_tokens"


def step_of(options: dict) -> tuple[int, int]:
    """(step index, number of steps) of the forward whose ``transformer_options`` these are."""
    sigmas, current = options.get("sample_sigmas"), options.get("sigmas")
    if sigmas is None or current is None or len(sigmas) < 2:
        return 0, 1
    steps = len(sigmas) - 1
    s = float(current.flatten()[0])
    i = int(torch.argmin((sigmas[:steps].float().cpu() - s).abs()))
    return i, steps


class ShiftPatches:
    """Patches for every block of a Flux with ``num_double`` + ``num_single`` blocks.

    schedule: make_schedule parameters (a dict, as Domain Schedule gives) or a DomainSchedule;
    None samples in the real domain everywhere."""

    def __init__(self, shifters: DomainShifters, schedule=None):
        self.shifters = shifters.eval()
        self.num_double, self.num_single = shifters.cfg.num_double, shifters.cfg.num_single
        self._params = schedule if isinstance(schedule, dict) else None
        self._schedule: Optional[DomainSchedule] = schedule if isinstance(schedule, DomainSchedule) else (
            DomainSchedule("real") if schedule is None else None)
        self._table = shifters.precompute() if shifters.cfg.variant == "bias" else None
        self._by_steps: dict[int, DomainSchedule] = {}

    def schedule(self, num_steps: int) -> DomainSchedule:
        if self._schedule is not None:
            return self._schedule
        if num_steps not in self._by_steps:
            self._by_steps[num_steps] = make_schedule(num_blocks=self.num_double + self.num_single,
                                                      num_steps=num_steps, **self._params)
        return self._by_steps[num_steps]

    def domain(self, block: int, options: dict) -> int:
        step, steps = step_of(options)
        name = self.schedule(steps).domains(step, steps, self.num_double + self.num_single)[block]
        return self.shifters.domain_index(name)

    def shift(self, block: int, x: torch.Tensor, options: dict) -> torch.Tensor:
        """``x`` [B, N, D] image tokens plus block ``block``'s shift."""
        d = self.domain(block, options)
        if self._table is not None:
            return x + self._table[block, d].to(x.device, x.dtype)
        module = self.shifters.blocks[block].to(x.device)
        tags = torch.full((x.shape[0],), d, dtype=torch.long, device=x.device)
        return module(x, tags).to(x.dtype)

    def patches(self) -> dict:
        """{("double_block", i) | ("single_block", i): patch} for ComfyUI's ``patches_replace["dit"]``."""
        out = {}
        for i in range(self.num_double):
            out[("double_block", i)] = self._double(i)
        for i in range(self.num_single):
            out[("single_block", i)] = self._single(i)
        return out

    def _double(self, i: int):
        def patch(args, extra):
            options = args.get("transformer_options") or {}
            options[TEXT_LENGTH_KEY] = args["txt"].shape[1]
            return extra["original_block"]({**args, "img": self.shift(i, args["img"], options)})
        return patch

    def _single(self, i: int):
        block = self.num_double + i

        def patch(args, extra):
            options = args.get("transformer_options") or {}
            start = options.get(TEXT_LENGTH_KEY)
            if start is None:
                raise RuntimeError("Realiz3D shift patches: the single blocks ran before any double block")
            x = args["img"]
            x = torch.cat([x[:, :start], self.shift(block, x[:, start:], options)], dim=1)
            return extra["original_block"]({**args, "img": x})
        return patch
