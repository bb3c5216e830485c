"""Reading weight files safely: safetensors only (``.pt``/``.pth``/``.bin`` through
``torch.load(weights_only=True)``), clear errors for truncated files, fp8 upcast at load."""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple, Union

import torch

from ..renderers.errors import InputError

StateDict = Dict[str, torch.Tensor]
WEIGHT_EXTENSIONS = (".safetensors", ".pt", ".pth", ".bin")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_FP8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
             if hasattr(torch, n))


def resolve_dtype(dtype: Union[str, torch.dtype], input_name: str = "dtype") -> torch.dtype:
    """``"fp32"``/``"bf16"``/``"fp16"`` (or a torch float dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif dtype in DTYPES:
        return DTYPES[dtype]
    raise InputError(input_name, f"'{dtype}' is not a compute dtype; use one of {', '.join(DTYPES)}.")


def read_metadata(path: str) -> Dict[str, str]:
    """The ``__metadata__`` of a safetensors file ({} when none)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


def read_state_dict(path: str, input_name: str) -> StateDict:
    """All tensors of a weight file, on the CPU, in their stored dtypes.

    Raises :class:`InputError` (naming ``input_name`` and the file) for a missing file, an
    unsupported extension, or a file safetensors/torch cannot parse (truncated downloads).
    Pickle files are read with ``weights_only=True``: they cannot run code.
    """
    name = os.path.basename(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in WEIGHT_EXTENSIONS:
        raise InputError(input_name, f"'{name}' is not a weight file; use a .safetensors file "
                                     f"(or {', '.join(WEIGHT_EXTENSIONS[1:])}).")
    if not os.path.isfile(path):
        raise InputError(input_name, f"'{name}' does not exist.")
    if ext == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as exc:  # safetensors raises SafetensorError or OSError for bad headers/sizes
            raise InputError(input_name, f"'{name}' could not be read: truncated or not a safetensors file "
                                         f"({exc}). Download it again.") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, or objects weights_only refuses
        raise InputError(input_name, f"'{name}' could not be read as a torch state dict ({type(exc).__name__}: "
                                     f"{exc}); convert it to .safetensors.") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]   # training checkpoints wrap the weights
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(input_name, f"'{name}' does not hold a flat dict of tensors.")
    return obj


def apply_comfy_fp8_scales(state_dict: StateDict) -> StateDict:
    """Undo ComfyUI's "scaled fp8" storage: ``X.weight`` (fp8) times ``X.scale_weight``.

    Such files carry a ``scaled_fp8`` marker and per-layer ``scale_weight`` (and ``scale_input``,
    used only by fp8 matmul kernels); dropping the scales would silently give wrong weights.
    """
    sd = {k: v for k, v in state_dict.items() if k != "scaled_fp8" and not k.endswith(".scale_input")}
    for key in [k for k in sd if k.endswith(".scale_weight")]:
        scale = sd.pop(key).float()
        wkey = key[: -len("scale_weight")] + "weight"
        if wkey in sd:
            w = sd[wkey].float()
            sd[wkey] = w * (scale.reshape(-1, *([1] * (w.ndim - 1))) if scale.numel() > 1 else scale)
    return sd


def to_compute(state_dict: StateDict, dtype: torch.dtype, device: Union[str, torch.device] = "cpu",
               keep_fp32: Tuple[str, ...] = ()) -> StateDict:
    """Cast floating tensors (fp8 included: upcast at load) to ``dtype`` on ``device``.

    Tensors of modules named in ``keep_fp32`` stay float32 (T5's ``wo`` overflows in fp16).
    """
    out = {}
    for k, v in state_dict.items():
        if v.is_floating_point() or v.dtype in _FP8:
            target = torch.float32 if any(f".{p}." in f".{k}" for p in keep_fp32) else dtype
            v = v.to(torch.float32).to(target) if v.dtype in _FP8 else v.to(target)
        out[k] = v.to(device)
    return out


def has_fp8(state_dict: StateDict) -> bool:
    return any(v.dtype in _FP8 for v in state_dict.values())


def file_label(path: Optional[str]) -> str:
    return f"'{os.path.basename(path)}'" if path else "(none)"
