"""Single-file CLIP-L and T5 encoders as ComfyUI keeps them (``models/text_encoders``).

Key layouts accepted: transformers' (``text_model.encoder.layers.0...`` for CLIP, with or
without ``text_model.``; ``shared.weight`` + ``encoder.block.0...`` for T5), behind any prefix
(``cond_stage_model.transformer.``, ``text_encoders.clip_l.transformer.``, ...). CLIP's ``text_projection`` and
``logit_scale`` (kept by some files) are unused by Flux and dropped; a full T5 file's decoder
is dropped.

What the shapes tell and what they do not:
- CLIP: vocab, hidden size, positions, layers and MLP width are read. The head count is not
  in any shape: it is ``hidden / 64`` (every released CLIP text tower has 64-dim heads; a
  model narrower than 64 gets one head) unless ``clip_num_heads`` is given. Activation
  (quick_gelu), epsilon and special token ids come from the shipped CLIP-L config (a vocab
  other than CLIP's 49408, i.e. a test model, ends with its bos and eos tokens instead).
- T5: vocab, d_model, layers, d_ff, gated or not, heads (from the relative attention bias
  [buckets, heads]) and d_kv (q's width / heads) are all read; activation and epsilon come
  from the shipped T5-XXL v1.1 config.
"""
from __future__ import annotations

import os
import re
from typing import Dict, Optional, Tuple

import torch

from ..renderers.errors import InputError
from . import configs
from .weights_io import file_label

StateDict = Dict[str, torch.Tensor]
CLIP_HEAD_DIM = 64


def normalize_clip_keys(sd: StateDict, input_name: str, path: Optional[str] = None) -> StateDict:
    """CLIP text keys without any prefix (``embeddings.``, ``encoder.layers.``, ``final_layer_norm.``).

    Files keep them behind ``text_model.`` (transformers 4) and often more; transformers 5's
    ``CLIPTextModel`` has no ``text_model`` level: :func:`clip_keys_for` adds it back where needed.
    """
    out = {}
    for k, v in sd.items():
        i = k.find("text_model.")
        bare = k[i + len("text_model."):] if i >= 0 else k
        if re.match(r"^(embeddings|encoder\.layers|final_layer_norm)\.", bare):
            out[bare] = v
    out.pop("embeddings.position_ids", None)   # a buffer, rebuilt by the model
    if "embeddings.token_embedding.weight" not in out:
        hint = " It looks like a T5 encoder." if any("SelfAttention" in k for k in sd) else ""
        raise InputError(input_name, f"{file_label(path)} is not a CLIP text encoder in transformers' layout "
                                     f"(no text_model.embeddings.token_embedding.weight).{hint}")
    return out


def clip_keys_for(model: torch.nn.Module, sd: StateDict) -> StateDict:
    """Bare CLIP keys renamed to what ``model`` (transformers 4 or 5) expects."""
    if any(k.startswith("text_model.") for k in model.state_dict(keep_vars=True)):
        return {"text_model." + k: v for k, v in sd.items()}
    return sd


def normalize_t5_keys(sd: StateDict, input_name: str, path: Optional[str] = None) -> StateDict:
    """T5 encoder keys as transformers' ``T5EncoderModel`` names them (``shared``, ``encoder.``)."""
    out = {}
    for k, v in sd.items():
        m = re.search(r"(^|\.)(shared\.weight|encoder\.(block\.|final_layer_norm\.|embed_tokens\.).*)$", k)
        if m and ".decoder." not in k and not k.startswith("decoder."):
            out[m.group(2)] = v
    if "shared.weight" not in out and "encoder.embed_tokens.weight" in out:
        out["shared.weight"] = out["encoder.embed_tokens.weight"]
    bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    if "shared.weight" not in out or bias not in out:
        hint = " It looks like a CLIP text encoder." if any("text_model." in k for k in sd) else ""
        raise InputError(input_name, f"{file_label(path)} is not a T5 encoder in transformers' layout (needs "
                                     f"shared.weight and encoder.block.0...relative_attention_bias).{hint}")
    out["encoder.embed_tokens.weight"] = out["shared.weight"]   # tied in T5EncoderModel
    return out


def _n_layers(sd: StateDict, pattern: str) -> int:
    return len({m.group(1) for k in sd for m in [re.match(pattern, k)] if m})


def infer_clip_config(sd: StateDict, num_heads: Optional[int] = None):
    """A ``CLIPTextConfig`` for normalized CLIP keys (see the module docstring for what is read)."""
    from transformers import CLIPTextConfig

    cfg = configs.load("clip_l")
    vocab, hidden = sd["embeddings.token_embedding.weight"].shape
    cfg.update(vocab_size=int(vocab), hidden_size=int(hidden), projection_dim=int(hidden),
               max_position_embeddings=int(sd["embeddings.position_embedding.weight"].shape[0]),
               num_hidden_layers=_n_layers(sd, r"encoder\.layers\.(\d+)\."),
               intermediate_size=int(sd["encoder.layers.0.mlp.fc1.weight"].shape[0]),
               num_attention_heads=int(num_heads or max(1, hidden // CLIP_HEAD_DIM)))
    if hidden % cfg["num_attention_heads"]:
        raise InputError("clip_num_heads", f"{cfg['num_attention_heads']} heads do not divide hidden size {hidden}.")
    if vocab != 49408:
        # the shipped ids are CLIP-L's; a smaller (test) vocab ends with its eos token
        cfg.update(bos_token_id=int(vocab) - 2, eos_token_id=int(vocab) - 1, pad_token_id=int(vocab) - 1)
    cfg.pop("architectures", None)
    cfg.pop("model_type", None)
    return CLIPTextConfig(**cfg)


def infer_t5_config(sd: StateDict):
    """A ``T5Config`` for normalized T5 encoder keys (see the module docstring)."""
    from transformers import T5Config

    cfg = configs.load("t5xxl")
    vocab, d_model = sd["shared.weight"].shape
    buckets, heads = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
    inner = sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in sd
    wi = sd["encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight"]
    n = _n_layers(sd, r"encoder\.block\.(\d+)\.")
    cfg.update(vocab_size=int(vocab), d_model=int(d_model), num_heads=int(heads), d_kv=int(inner // heads),
               relative_attention_num_buckets=int(buckets), d_ff=int(wi.shape[0]), num_layers=n,
               num_decoder_layers=n, feed_forward_proj="gated-gelu" if gated else "relu")
    if not gated:
        cfg.update(is_gated_act=False, dense_act_fn="relu")
    cfg.pop("architectures", None)
    cfg.pop("model_type", None)
    return T5Config(**cfg)


def build_on_meta(cls, config):
    """An uninitialised model (no random init: a 4.7B T5 would take minutes) to fill with
    ``load_state_dict(assign=True)``."""
    with torch.device("meta"):
        return cls(config)


def fill(model: torch.nn.Module, sd: StateDict, what: str, path: Optional[str]) -> torch.nn.Module:
    """Load ``sd`` into a meta-built model, strictly: every parameter must come from the file."""
    result = model.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise InputError(what, f"{file_label(path)} does not match the model its shapes describe: missing "
                               f"{missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}.")
    emb = getattr(getattr(model, "text_model", model), "embeddings", None)
    if emb is not None and hasattr(emb, "position_ids") and hasattr(emb, "position_embedding"):   # CLIP's non-persistent buffer
        n = emb.position_embedding.weight.shape[0]
        emb.register_buffer("position_ids", torch.arange(n, device=emb.position_embedding.weight.device)[None],
                            persistent=False)
    still_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if still_meta:
        raise RuntimeError(f"{what}: tensors left uninitialised after loading: {still_meta[:3]}")
    if getattr(model, "encoder", None) is not None and hasattr(model, "shared"):
        model.encoder.embed_tokens = model.shared   # T5 ties the two: keep one tensor
    return model.eval()


def load_tokenizers(clip_folder: Optional[str], t5_folder: Optional[str],
                    clip_max_length: int = 77) -> Tuple[object, object]:
    """CLIP and T5 tokenizers from local folders (nothing is downloaded); ``None`` stays ``None``.

    A folder holds transformers' files (CLIP: vocab.json + merges.txt; T5: tokenizer.json or
    spiece.model). ComfyUI's own ``comfy/sd1_tokenizer`` and ``comfy/text_encoders/t5_tokenizer``
    work. CLIP's ``model_max_length`` is set to the encoder's positions (77): ComfyUI's
    folder says 8192, which Flux's pipeline would pass on to a 77-position CLIP.
    """
    from transformers import CLIPTokenizer, T5Tokenizer

    out = []
    for folder, cls, name in ((clip_folder, CLIPTokenizer, "clip_tokenizer"), (t5_folder, T5Tokenizer, "t5_tokenizer")):
        if folder is None:
            out.append(None)
            continue
        if not os.path.isdir(folder):
            raise InputError(name, f"'{folder}' is not a folder of tokenizer files.")
        try:
            tok = cls.from_pretrained(folder, local_files_only=True)
        except Exception as exc:  # transformers raises OSError/ValueError/TypeError for incomplete folders
            raise InputError(name, f"'{os.path.basename(folder)}' does not hold a {cls.__name__} "
                                   f"({type(exc).__name__}: {exc}).") from exc
        if cls is CLIPTokenizer:
            tok.model_max_length = clip_max_length
        out.append(tok)
    return out[0], out[1]
