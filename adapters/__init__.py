"""Adapters on the engine: Realiz3D's domain shifters and domain schedules.

    shifters = DomainShifters(ShifterConfig.for_transformer(transformer))   # untrained = identity
    schedule = make_schedule("layer-aware", k_layers=8)
    schedule.domains(step, num_steps, shifters.cfg.num_blocks)   # ['synthetic', ..., 'real', ...]
"""
from .domain_schedule import PRESETS, DomainSchedule, make_schedule
from .domain_shifter import DomainShifter, DomainShifters, ShifterConfig, load_shifters, save_shifters

__all__ = ["PRESETS", "DomainSchedule", "make_schedule", "DomainShifter", "DomainShifters", "ShifterConfig",
           "load_shifters", "save_shifters"]
