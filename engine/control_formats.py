"""Which convention a control LoRA file follows, told from its keys, its metadata and its name.

Two conventions use the same mechanism (aligned condition branches at t = 0 with the LoRA on
them, the target on the base weights) and the same key layout (x_embedder and the image-stream
linears of every block, refany3d.lora_targets), but differ in how they were trained:

- **OminiControl** spatial LoRAs (SPEC.md section 5; published as ``canny``, ``depth``,
  ``coloring``, ``deblurring``.safetensors): every condition is a posterior sample of the VAE,
  conditions do not see each other, each adapter at scale exactly 1. All four files share one key
  layout and rank (4), so the task comes from the file name.
- **Realiz3D** control LoRAs trained by this pack (training/): condition latents are the
  posterior mean, the control maps of one sample see each other. Files the pack writes say so in
  their metadata (``realiz3d_lora``).

``auto`` picks OminiControl for a file in its layout whose name names one of its tasks and that
the pack did not write, Realiz3D otherwise; a user can override it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

from ..refany3d.lora_targets import is_target
from ..renderers.errors import InputError

OMINICONTROL, REALIZ3D, AUTO = "OminiControl", "Realiz3D", "auto"
CONVENTIONS = (AUTO, OMINICONTROL, REALIZ3D)
#: OminiControl's spatial tasks -> the control map a mesh render gives for it (None: no render
#: gives it; the images must come from elsewhere)
OMINICONTROL_TASKS = {"depth": "depth (inverse)", "canny": "canny", "coloring": None, "deblurring": None}
#: safetensors metadata key the pack writes into its own LoRA files (its value: the LoRA's role)
PACK_METADATA_KEY = "realiz3d_lora"

_DOUBLE = ("norm1.linear", "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "ff.net.2")
_SINGLE = ("norm.linear", "proj_mlp", "proj_out", "attn.to_q", "attn.to_k", "attn.to_v")


@dataclass(frozen=True)
class ControlLoRAInfo:
    """convention: OMINICONTROL or REALIZ3D; task: an OminiControl task or None; rank: the
    LoRA's rank (the largest over its layers); layout: whether the keys are the spatial layout
    (x_embedder and all six image-stream linears of every block they touch)."""

    convention: str
    task: Optional[str]
    rank: int
    layout: bool

    @property
    def control_map(self) -> Optional[str]:
        """The mesh control map this LoRA takes ('depth (inverse)', 'canny'), None when not known."""
        return OMINICONTROL_TASKS.get(self.task) if self.convention == OMINICONTROL else None

    @property
    def condition_latents(self) -> str:
        """'sample if possible' (OminiControl's posterior draws) or 'mean' (the pack's training)."""
        return "sample if possible" if self.convention == OMINICONTROL else "mean"

    @property
    def independent(self) -> bool:
        """Whether several control images of this LoRA must not see each other."""
        return self.convention == OMINICONTROL

    def describe(self) -> str:
        if self.convention == OMINICONTROL:
            what = f"OminiControl spatial LoRA, task '{self.task}'" if self.task else "OminiControl spatial LoRA"
        else:
            what = "Realiz3D control LoRA"
        return f"{what} (rank {self.rank})"


def spatial_layout(modules: set[str]) -> bool:
    """Whether ``modules`` (diffusers module names, no ``transformer.`` prefix) is OminiControl's
    spatial key layout: x_embedder plus, for every block it touches, all six image-stream linears."""
    if "x_embedder" not in modules or not all(is_target(m) for m in modules):
        return False
    blocks: dict[tuple[str, int], set[str]] = {}
    for m in modules - {"x_embedder"}:
        kind, index, rest = re.match(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)", m).groups()
        blocks.setdefault((kind, int(index)), set()).add(rest)
    return bool(blocks) and all(names == set(_DOUBLE if kind == "transformer_blocks" else _SINGLE)
                                for (kind, _), names in blocks.items())


def task_from_name(file_name: str) -> Optional[str]:
    """The OminiControl task a file name names ('experimental/depth.safetensors' -> 'depth';
    'omini_canny_v1.safetensors' -> 'canny'), or None."""
    stem = os.path.splitext(os.path.basename(file_name))[0].lower()
    words = set(re.split(r"[^a-z]+", stem))
    found = [t for t in OMINICONTROL_TASKS if t in words]
    return found[0] if len(found) == 1 else None


def describe_control_lora(state: dict, file_name: str, file_metadata: Optional[dict] = None,
                          convention: str = AUTO, input_name: str = "lora") -> ControlLoRAInfo:
    """The convention of a LoRA state dict in diffusers' layout ({'transformer.<module>.lora_A.weight': ...}).

    file_metadata: the safetensors header's metadata (the pack's own files carry
    PACK_METADATA_KEY); convention: AUTO, or OMINICONTROL / REALIZ3D to override."""
    if convention not in CONVENTIONS:
        raise InputError("convention", f"must be one of {CONVENTIONS} (got {convention!r}).")
    modules = {k.split(".lora_A.")[0].removeprefix("transformer.") for k in state if ".lora_A." in k}
    rank = max((int(v.shape[0]) for k, v in state.items() if ".lora_A." in k), default=0)
    layout = spatial_layout(modules)
    task = task_from_name(file_name)
    if convention == AUTO:
        pack_file = bool(file_metadata and PACK_METADATA_KEY in file_metadata)
        convention = OMINICONTROL if layout and task and not pack_file else REALIZ3D
    return ControlLoRAInfo(convention, task if convention == OMINICONTROL else None, rank, layout)


def read_file_metadata(path: str) -> dict:
    """The safetensors header's metadata of ``path`` ({} when it has none)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})
