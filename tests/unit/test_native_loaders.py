"""A FLUX.1-width Flux loaded by ComfyUI's own loader, as Load Diffusion Model loads it, in the
weight dtypes it offers and its scaled-fp8 file format: the engine on it equals ComfyUI's
forward, and fp8 weights stay fp8."""
import os

import pytest
import torch

from comfy_native import import_comfy, single_file_model, write_full_width_flux, write_scaled_fp8
from realiz3d.engine import Branch, FluxEngine
from realiz3d.engine.bfl_layers import BFLFluxLayers
from realiz3d.sampling.flow import initial_noise, pack_latents, unpack_latents
from test_native_model import node_native, stored_dtype

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(ROOT, ".cache", "test_models")


@pytest.mark.parametrize("weight_dtype", ["default", "float8_e4m3fn", "scaled_fp8"])
def test_full_width_single_file_through_comfy_loader(weight_dtype):
    """A FLUX.1-width file loaded by ComfyUI's own loader (what Load Diffusion Model does), with
    the weight dtypes it offers and its scaled-fp8 file format: the engine with no branches
    equals ComfyUI's forward; fp8 weights stay fp8."""
    import_comfy()
    path = write_full_width_flux(os.path.join(CACHE, "flux_3072_1x1_bf16.safetensors"))
    if weight_dtype == "scaled_fp8":
        path, weight_dtype = write_scaled_fp8(path, os.path.join(CACHE, "flux_3072_1x1_scaled_fp8.safetensors")), \
            "default"
        scaled = True
    else:
        scaled = False
    patcher = single_file_model(path, weight_dtype)
    native, _ = node_native()
    dm = native.flux_module(patcher)
    dtype = native.compute_dtype(patcher)
    if weight_dtype != "default" or scaled:
        assert stored_dtype(dm.double_blocks[0].img_attn.qkv.weight) == torch.float8_e4m3fn
        assert stored_dtype(dm.single_blocks[0].linear1.weight) == torch.float8_e4m3fn
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 4, 6, generator=g).to(dtype)
    ctx, y = torch.randn(1, 3, 4096, generator=g).to(dtype), torch.randn(1, 768, generator=g).to(dtype)
    t, guid = torch.tensor([0.4]), torch.tensor([3.5])
    with torch.no_grad():
        ref = dm(x, t.to(dtype), ctx, y=y, guidance=guid.to(dtype))
        _, ids = initial_noise(1, 16, 32, 48, torch.float32, "cpu", torch.Generator())
        out = FluxEngine(BFLFluxLayers(dm, dtype, "cpu"))([Branch(ctx, torch.zeros(3, 3), t, guid, is_text=True),
                                                          Branch(pack_latents(x), ids, t, guid)], None, y)[1]
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert (unpack_latents(out.float(), 32, 48) - ref.float()).abs().max() <= tol * max(1.0, float(ref.abs().max()))
    if scaled and hasattr(dm.single_blocks[0].linear1, "scale_weight"):      # 0.3.75's scaled-fp8 ops
        assert float(dm.single_blocks[0].linear1.scale_weight) != 1.0       # the file's scales were loaded

