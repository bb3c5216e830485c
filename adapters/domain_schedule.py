"""Domain schedules (SPEC.md section 3, ours): which domain each engine block uses at each
denoising step, so controls can be applied in the synthetic domain's early layers or early
steps while the image is finished as a real photo."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from ..renderers.errors import InputError

PRESETS = ("real", "synthetic", "layer-aware", "step-switch", "custom")
SYNTHETIC, REAL = "synthetic", "real"


@dataclass(frozen=True)
class DomainSchedule:
    """preset: real | synthetic | layer-aware (synthetic for blocks < k_layers) | step-switch
    (synthetic for steps < switch_fraction * steps) | custom (``grid``: a list over steps of
    lists over blocks of domain names, or one list over blocks used at every step)."""

    preset: str = "real"
    k_layers: int = 0
    switch_fraction: float = 0.0
    grid: Optional[tuple] = None

    def domains(self, step: int, num_steps: int, num_blocks: int) -> list[str]:
        """Domain name of every block at ``step`` (0-based) of ``num_steps``."""
        if self.preset == "real":
            return [REAL] * num_blocks
        if self.preset == "synthetic":
            return [SYNTHETIC] * num_blocks
        if self.preset == "layer-aware":
            return [SYNTHETIC if b < self.k_layers else REAL for b in range(num_blocks)]
        if self.preset == "step-switch":
            return [SYNTHETIC if step < self.switch_fraction * num_steps else REAL] * num_blocks
        row = self.grid[step] if isinstance(self.grid[0], (list, tuple)) else self.grid
        return list(row)


def make_schedule(preset: str, k_layers: int = 0, switch_fraction: float = 0.0, grid_json: str = "",
                  num_blocks: Optional[int] = None, num_steps: Optional[int] = None,
                  domains: tuple = (SYNTHETIC, REAL)) -> DomainSchedule:
    """A validated schedule; with num_blocks / num_steps given, it is checked against them."""
    if preset not in PRESETS:
        raise InputError("preset", f"must be one of {PRESETS} (got {preset!r}).")
    if not 0.0 <= switch_fraction <= 1.0:
        raise InputError("switch_fraction", f"must be within [0, 1] (got {switch_fraction}).")
    if k_layers < 0 or (num_blocks is not None and k_layers > num_blocks):
        raise InputError("k_layers", f"must be from 0 to the model's {num_blocks} blocks (got {k_layers}).")
    grid = None
    if preset == "custom":
        try:
            grid = json.loads(grid_json)
        except json.JSONDecodeError as exc:
            raise InputError("grid", f"is not valid JSON ({exc}).") from exc
        rows = grid if grid and isinstance(grid[0], list) else [grid]
        if not rows or not all(isinstance(r, list) and r for r in rows):
            raise InputError("grid", "must be a list of domain names per block, or a list of such lists per step.")
        for i, row in enumerate(rows):
            bad = [d for d in row if d not in domains]
            if bad:
                raise InputError("grid", f"row {i} names unknown domains {bad}; use {list(domains)}.")
            if num_blocks is not None and len(row) != num_blocks:
                raise InputError("grid", f"row {i} has {len(row)} entries but the model has {num_blocks} blocks "
                                         "(one entry per block: double blocks first, then single blocks).")
        if num_steps is not None and rows is grid and len(rows) != num_steps:
            raise InputError("grid", f"has {len(rows)} rows but sampling runs {num_steps} steps (one row per step, "
                                     "or a single row for every step).")
        grid = tuple(tuple(r) for r in grid) if rows is grid else tuple(grid)
    return DomainSchedule(preset, k_layers, switch_fraction, grid)
