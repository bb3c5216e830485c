"""Realiz3D's Domain Shifters (SPEC.md section 3): one small adapter before every DiT block that
moves the target image tokens towards a visual domain (synthetic render S, real photo R).

Figure variant ("bias"): x~ = x + W_right(W_left(Embed(domain))), a shift that depends only on
(block, domain), so at inference it is one precomputed vector per block and domain.
Token variant ("token", ours): x~ = x + W_right(W_left(x) * g(Embed(domain))).
W_right starts at zero in both, so an untrained shifter is the identity.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..renderers.errors import InputError

FORMAT_VERSION = 1
VARIANTS = ("bias", "token")


@dataclass(frozen=True)
class ShifterConfig:
    """Layout (block counts, hidden size) of the backbone and the shifters' own sizes."""
    num_double: int
    num_single: int
    hidden: int
    rank: int = 8
    embed_dim: int = 64
    variant: str = "bias"
    domains: tuple = ("synthetic", "real")

    @property
    def num_blocks(self) -> int:
        return self.num_double + self.num_single

    @classmethod
    def for_transformer(cls, transformer, **kw) -> "ShifterConfig":
        """The layout of a diffusers transformer, a BFL/ComfyUI Flux module or engine FluxLayers."""
        from ..engine.layers import flux_layers
        layers = flux_layers(transformer)
        return cls(layers.num_double, layers.num_single, layers.hidden, **kw)


class DomainShifter(nn.Module):
    """The shifter of one block. forward(x [B, N, D], domain LongTensor [B]) -> [B, N, D]."""

    def __init__(self, cfg: ShifterConfig):
        super().__init__()
        if cfg.variant not in VARIANTS:
            raise InputError("variant", f"must be one of {VARIANTS} (got {cfg.variant!r}).")
        self.variant = cfg.variant
        self.embed = nn.Embedding(len(cfg.domains), cfg.embed_dim)
        if cfg.variant == "bias":
            self.left = nn.Linear(cfg.embed_dim, cfg.rank, bias=False)
        else:
            self.left = nn.Linear(cfg.hidden, cfg.rank, bias=False)
            self.gate = nn.Linear(cfg.embed_dim, cfg.rank)
        self.right = nn.Linear(cfg.rank, cfg.hidden, bias=False)
        nn.init.zeros_(self.right.weight)

    def shift(self, domain: torch.Tensor) -> torch.Tensor:
        """Bias variant: the added vector per sample, [B, D]."""
        return self.right(self.left(self.embed(domain)))

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        if self.variant == "bias":
            return x + self.shift(domain).to(x.dtype)[:, None, :]
        g = self.gate(self.embed(domain))[:, None, :]
        return x + self.right(self.left(x.to(self.left.weight.dtype)) * g).to(x.dtype)


class DomainShifters(nn.Module):
    """One shifter per engine block: double blocks first, then single blocks."""

    def __init__(self, cfg: ShifterConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(DomainShifter(cfg) for _ in range(cfg.num_blocks))

    def domain_index(self, name: str) -> int:
        if name not in self.cfg.domains:
            raise InputError("domain", f"'{name}' is not one of this shifter's domains {list(self.cfg.domains)}.")
        return self.cfg.domains.index(name)

    @torch.no_grad()
    def precompute(self) -> torch.Tensor:
        """Bias variant only: [num_blocks, num_domains, D], the whole inference-time cost."""
        if self.cfg.variant != "bias":
            raise ValueError("only the bias variant reduces to precomputed vectors")
        ids = torch.arange(len(self.cfg.domains))
        return torch.stack([b.shift(ids) for b in self.blocks])

    def check_fits(self, transformer, input_name: str = "shifter") -> None:
        want = ShifterConfig.for_transformer(transformer)
        got = self.cfg
        if (got.num_double, got.num_single, got.hidden) != (want.num_double, want.num_single, want.hidden):
            raise InputError(input_name, f"shifters for a backbone of {got.num_double} double + {got.num_single} "
                                         f"single blocks, hidden {got.hidden}; the loaded model has "
                                         f"{want.num_double} + {want.num_single}, hidden {want.hidden}. Use "
                                         "shifters trained for this model.")


def save_shifters(shifters: DomainShifters, path: str) -> None:
    """safetensors with metadata: layout, rank, embedding size, variant, domains, format version.
    Written to a temporary file, then renamed: a failed save leaves no partial file."""
    from safetensors.torch import save_file
    meta = {"format": "realiz3d-domain-shifters", "format_version": str(FORMAT_VERSION),
            "config": json.dumps(asdict(shifters.cfg))}
    tmp = path + ".tmp"
    try:
        save_file({k: v.detach().contiguous() for k, v in shifters.state_dict().items()}, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_shifters(path: str, input_name: str = "shifter") -> DomainShifters:
    from safetensors import safe_open
    from safetensors.torch import load_file
    name = os.path.basename(path)
    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(path)
    except Exception as exc:
        raise InputError(input_name, f"'{name}' could not be read ({exc}); expected a Realiz3D shifter "
                                     ".safetensors file.") from exc
    if meta.get("format") != "realiz3d-domain-shifters":
        raise InputError(input_name, f"'{name}' is not a Realiz3D domain-shifter file (no shifter metadata).")
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        raise InputError(input_name, f"'{name}' has an unreadable format version "
                                     f"({meta.get('format_version')!r}); the file is damaged. Save the shifters "
                                     "again (Train Domain Shifter writes them).") from None
    if version > FORMAT_VERSION:
        raise InputError(input_name, f"'{name}' has format version {meta['format_version']}; this pack reads "
                                     f"up to {FORMAT_VERSION}. Update the pack.")
    fields = sorted(f.name for f in dataclasses.fields(ShifterConfig))
    try:
        raw = json.loads(meta["config"])
    except KeyError:
        raise InputError(input_name, f"'{name}' has no shifter config in its metadata; the file is damaged. Save "
                                     "the shifters again (Train Domain Shifter writes them).") from None
    except json.JSONDecodeError as exc:
        raise InputError(input_name, f"'{name}': its shifter config metadata is not valid JSON ({exc}); the file "
                                     "is damaged. Save the shifters again (Train Domain Shifter writes them).") from None
    if not isinstance(raw, dict):
        raise InputError(input_name, f"'{name}': its shifter config metadata is a {type(raw).__name__}, not a "
                                     f"JSON object with the keys {fields}. Save the shifters again.")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise InputError(input_name, f"'{name}': its shifter config has keys this pack does not know ({unknown}; "
                                     f"known: {fields}); it was written by another version of Realiz3D or edited. "
                                     "Update the pack or save the shifters again.")
    try:
        cfg = ShifterConfig(**{**raw, "domains": tuple(raw.get("domains", ShifterConfig.domains))})
        shifters = DomainShifters(cfg)
    except Exception as exc:
        raise InputError(input_name, f"'{name}': its shifter config {raw} cannot build shifters "
                                     f"({type(exc).__name__}: {exc}); it needs {fields} with whole numbers for the "
                                     "sizes. Save the shifters again.") from exc
    try:
        shifters.load_state_dict(tensors)
    except RuntimeError as exc:
        raise InputError(input_name, f"'{name}' does not match its own metadata ({exc}).") from exc
    return shifters.eval()
