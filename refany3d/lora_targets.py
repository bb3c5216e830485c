"""The modules RefAny3D's LoRAs adapt (SPEC.md section 2), defined once for the whole pack.

``x_embedder``; double blocks' ``norm1.linear``, ``attn.to_q/k/v``, ``attn.to_out.0``,
``ff.net.2``; single blocks' ``norm.linear``, ``proj_mlp``, ``proj_out``, ``attn.to_q/k/v``:
the image-stream modules only. The reference hands peft a regular expression limited to the
blocks; a list of names would be matched by peft's suffix rule and also catch the transformer's
top-level ``proj_out`` (and any other module ending in one of the names), so the targets are
this full-match regex, which peft applies with ``re.fullmatch`` to every module name
(``LoraConfig(target_modules=LORA_TARGET_MODULES)``). The same default serves the pack's own
Realiz3D LoRAs (training's ``lora.targets``).

Imports nothing of the pack: every module may use it without cycles.
"""
from __future__ import annotations

import re

#: peft ``target_modules`` (a string: full match against module names such as
#: ``single_transformer_blocks.3.proj_out``); an optional prefix allows a wrapped transformer
LORA_TARGET_MODULES = (r"(?:.*\.)?(?:x_embedder"
                       r"|transformer_blocks\.\d+\.(?:norm1\.linear|attn\.to_[qkv]|attn\.to_out\.0|ff\.net\.2)"
                       r"|single_transformer_blocks\.\d+\.(?:norm\.linear|proj_mlp|proj_out|attn\.to_[qkv]))")


def is_target(module_name: str, targets=LORA_TARGET_MODULES) -> bool:
    """Whether peft would adapt ``module_name`` for ``targets`` (a regex: full match, peft's rule
    for a string; a list: exact name or ``.name`` suffix, peft's rule for a list)."""
    if isinstance(targets, str):
        return re.fullmatch(targets, module_name) is not None
    return any(module_name == t or module_name.endswith("." + t) for t in targets)
