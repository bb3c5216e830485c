"""Writing trained files atomically: a temporary file beside the target, then ``os.replace``,
so a failed write (full disk, cancelled job) leaves the previous file untouched."""
from __future__ import annotations

import os


def atomic_write(path: str, write) -> str:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_safetensors(tensors: dict, path: str, metadata: dict = None) -> str:
    from safetensors.torch import save_file

    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(plain, tmp, metadata=metadata))


def save_transformer(transformer, path: str) -> str:
    """A full-fine-tuned transformer as one safetensors file in the original BFL key layout
    (``model.diffusion_model.``), as ComfyUI keeps Flux and loading.load_transformer reads it."""
    from ..loading.bfl_keys import BFL_PREFIX, diffusers_to_bfl

    sd = {k.replace(".base_layer.", "."): v.detach().cpu().clone()       # peft wrappers of attached LoRAs
          for k, v in transformer.state_dict().items() if ".lora_" not in k}
    return save_safetensors(diffusers_to_bfl(sd, prefix=BFL_PREFIX), path,
                            {"format": "pt", "source": "realiz3d training (full fine-tuning)"})


def save_text(text: str, path: str) -> str:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return atomic_write(path, write)
