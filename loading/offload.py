"""Model offload for GPUs with less memory: weights stay in CPU memory and each component moves
to the execution device only while it runs (text encoders, then the transformer, then the VAE),
so the GPU holds one component at a time."""
from __future__ import annotations

from contextlib import contextmanager

import torch


class Offload:
    """``with offload.use(module, ...)``: the modules sit on ``device`` inside the block and go
    back to the CPU after it, also when the block raises (a cancelled prompt)."""

    def __init__(self, device):
        self.device = torch.device(device)

    @contextmanager
    def use(self, *modules):
        modules = [m for m in modules if m is not None]
        for m in modules:
            m.to(self.device)
        try:
            yield
        finally:
            for m in modules:
                m.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


@contextmanager
def no_offload(*modules):
    """The stand-in for :meth:`Offload.use` when nothing is offloaded."""
    yield
