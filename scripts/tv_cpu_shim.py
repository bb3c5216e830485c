"""Make PyPI's CUDA-linked torchvision importable next to a CPU-only torch (test host only).

torchvision's compiled ops library links against CUDA parts of torch that a CPU build lacks,
so its import stops at registering meta kernels for ops that were never defined. This module
(loaded at interpreter start by a .pth file) waits for the first `import torchvision`; if the
compiled library cannot load, it declares the two op schemas the meta registrations need.
The pure-Python parts of torchvision then work; its compiled ops stay unavailable.
"""
import importlib.abc
import importlib.machinery
import os
import sys

_library = None   # keeps the torch.library.Library (and its definitions) alive


def _declare_missing_ops() -> None:
    global _library
    spec = importlib.machinery.PathFinder.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    import torch

    compiled = os.path.join(next(iter(spec.submodule_search_locations)), "_C.so")
    try:
        torch.ops.load_library(compiled)
        return                                  # the real ops load (a CUDA torch): nothing to do
    except (OSError, ImportError):
        pass
    _library = torch.library.Library("torchvision", "DEF")
    for schema in ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                   "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor"):
        _library.define(schema)


class _FirstImportHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            try:
                _declare_missing_ops()
            except Exception as exc:   # never let the shim break the import it guards
                print(f"tv_cpu_shim: {exc!r}", file=sys.stderr)
        return None                     # let the normal finders import the module


if os.environ.get("TV_CPU_SHIM", "1") != "0":
    sys.meta_path.insert(0, _FirstImportHook())
