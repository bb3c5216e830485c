"""RefAny3D's domain embedder: Embedding(2, 256) -> Linear(256, D) -> SiLU -> Linear(D, D).

Its output for a branch's tag (0 = RGB, 1 = point map) is added to that branch's timestep
embedding. The last layer starts at zero, so an untrained embedder changes nothing.
"""
from __future__ import annotations

import os

from torch import nn

from ..loading.weights_io import read_state_dict
from ..renderers.errors import InputError

EMBED_DIM = 256
KEYS = ("0.weight", "1.weight", "1.bias", "3.weight", "3.bias")


def make_domain_embedder(hidden: int, num_domains: int = 2) -> nn.Sequential:
    m = nn.Sequential(nn.Embedding(num_domains, EMBED_DIM), nn.Linear(EMBED_DIM, hidden), nn.SiLU(),
                      nn.Linear(hidden, hidden))
    nn.init.zeros_(m[3].weight)
    nn.init.zeros_(m[3].bias)
    return m


def load_domain_embedder(path: str, hidden: int, input_name: str = "domain_embedder") -> nn.Sequential:
    """The embedder in ``path`` (.safetensors, or the published .pth read with
    ``torch.load(weights_only=True)``), checked against the model's hidden size."""
    sd = read_state_dict(path, input_name)
    name = os.path.basename(path)
    missing = [k for k in KEYS if k not in sd]
    if missing:
        found = sorted(sd)
        shown = found[:8] + (["..."] if len(found) > 8 else [])
        lacks = "has none of them" if len(missing) == len(KEYS) else f"lacks {missing}"
        raise InputError(input_name, f"'{name}' is not a RefAny3D domain embedder: an embedder holds the tensors "
                                     f"{list(KEYS)}; this file {lacks} and holds {len(found)} tensor(s): "
                                     f"{shown or 'none'}. Choose the domain_embedder.pth published with RefAny3D "
                                     "(or one that Train RefAny3D saved), not a LoRA or a model checkpoint.")
    got = sd["3.weight"].shape[0]
    if got != hidden or sd["1.weight"].shape[1] != EMBED_DIM:
        raise InputError(input_name, f"'{name}' is for a model of hidden size {got}, but the loaded Flux model "
                                     f"has hidden size {hidden}. Use the embedder trained for this model.")
    m = make_domain_embedder(hidden, num_domains=sd["0.weight"].shape[0])
    try:
        m.load_state_dict({k: sd[k] for k in KEYS})
    except RuntimeError as exc:
        sizes = {k: tuple(sd[k].shape) for k in KEYS}
        raise InputError(input_name, f"'{name}' has tensors of sizes that do not fit together {sizes} (for "
                                     f"hidden size {hidden}: 0.weight (2, {EMBED_DIM}), 1.weight ({hidden}, "
                                     f"{EMBED_DIM}), 3.weight ({hidden}, {hidden})); the file is damaged. Use the "
                                     "published domain_embedder.pth.") from exc
    return m.eval()


def convert_to_safetensors(pth_path: str, out_path: str) -> None:
    """Write the published .pth embedder as .safetensors (loaded with weights_only=True)."""
    from safetensors.torch import save_file
    sd = read_state_dict(pth_path, "domain_embedder")
    save_file({k: v.contiguous() for k, v in sd.items()}, out_path, metadata={"format": "refany3d-domain-embedder"})
