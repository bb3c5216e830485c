"""RefAny3D weights for a tiny test model, written in the published formats (diffusers LoRA
files via ``FluxPipeline.save_lora_weights``, a torch-pickled domain-embedder state dict), so
tests and the demo exercise the same loading path as the real files."""
from __future__ import annotations

import copy
import os

import torch

from .lora_targets import LORA_TARGET_MODULES

#: RefAny3D's LoRA targets (SPEC.md section 2): x_embedder, double blocks' norm1.linear,
#: attn.to_q/k/v, attn.to_out.0, ff.net.2; single blocks' norm.linear, proj_mlp, proj_out, attn.to_q/k/v
LORA_TARGETS = LORA_TARGET_MODULES
FILES = ("default.safetensors", "coord.safetensors", "domain_embedder.pth")


def write_tiny_refany3d(folder: str, transformer: torch.nn.Module, seed: int = 0, rank: int = 4,
                        std: float = 0.02) -> list[str]:
    """Random (seeded) Reference-LoRA, Domain-LoRA and domain embedder for ``transformer``'s
    size, written to ``folder`` under the published names. Returns their paths."""
    from diffusers import FluxPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from .domain_embedder import make_domain_embedder

    donor = copy.deepcopy(transformer)
    os.makedirs(folder, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for name in ("default", "coord"):
        donor.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGETS), adapter_name=name)
        for n, p in donor.named_parameters():
            if f".{name}." in n and "lora_B" in n:        # peft starts B at zero: give the LoRA an effect
                p.data = torch.randn(p.shape, generator=g) * std
        FluxPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(donor, adapter_name=name),
                                       weight_name=f"{name}.safetensors")
    cfg = transformer.config
    emb = make_domain_embedder(cfg.num_attention_heads * cfg.attention_head_dim)
    with torch.no_grad():
        emb[3].weight.normal_(0.0, std * 2.5, generator=g)
    torch.save(emb.state_dict(), os.path.join(folder, FILES[2]))
    return [os.path.join(folder, f) for f in FILES]


def write_tiny_spatial_lora(path: str, transformer: torch.nn.Module, seed: int = 0, std: float = 0.05) -> str:
    """A random (seeded) LoRA for ``transformer``'s size in the key layout of OminiControl's
    published spatial LoRAs (rank 4, alpha 4, x_embedder and the image-stream linears of every
    block; engine.control_formats), saved as ``FluxPipeline.save_lora_weights`` writes it; name
    the file after its task (``depth.safetensors``) for the pack to recognise it. Returns ``path``."""
    from diffusers import FluxPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    donor = copy.deepcopy(transformer)
    donor.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    g = torch.Generator().manual_seed(seed)
    for n, p in donor.named_parameters():
        if "lora_B" in n:                       # peft starts B at zero: give the LoRA an effect
            p.data = torch.randn(p.shape, generator=g) * std
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    FluxPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(donor),
                                   weight_name=os.path.basename(path))
    return path
