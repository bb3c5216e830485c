"""Tiny Flux-family models for tests and demos: built from the shipped configs with small sizes,
seeded, offline, in about a second, a few MB in all.

The shapes follow the real layouts (16-channel VAE with 8x downsampling, 2x2-packed 64-channel
transformer input, CLIP pooled vector + T5 tokens), so every loader and converter sees the
same structure as with FLUX.1; only widths and depths shrink. Weights are random (normal,
std 0.05, also where the real models start at zero) so that a wrong key mapping changes outputs.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Tuple

import torch

from . import configs
from .bfl_keys import BFL_PREFIX, diffusers_to_bfl
from .flux_files import FluxComponents, make_scheduler
from .vae_keys import diffusers_to_ldm_vae

TINY_TRANSFORMER = dict(num_layers=2, num_single_layers=2, attention_head_dim=64, num_attention_heads=2,
                        in_channels=64, joint_attention_dim=64, pooled_projection_dim=32, guidance_embeds=True,
                        axes_dims_rope=[16, 24, 24])
TINY_VAE = dict(block_out_channels=[32, 32, 32, 32], layers_per_block=1, sample_size=64)
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1,
                 max_position_embeddings=77)
TINY_T5 = dict(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, num_decoder_layers=2)
WORDS = ("a", "photo", "of", "the", "cat", "dog", "red", "blue", "chair", "house", "car", "tree", "on", "in",
         "white", "background", "render", "realistic", "mesh", "object")


def _bytes_to_unicode() -> List[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values (the BPE base alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def clip_bpe_files() -> Tuple[dict, List[str]]:
    """A small CLIP BPE vocabulary (bytes, bytes + ``</w>``, merges spelling :data:`WORDS`,
    then ``<|startoftext|>``, ``<|endoftext|>`` last, as in CLIP) and its merges."""
    base = _bytes_to_unicode()
    vocab = base + [c + "</w>" for c in base]
    merges: List[str] = []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        cur = parts[0]
        for p in parts[1:]:
            merge, cur = f"{cur} {p}", cur + p
            if merge not in merges:
                merges.append(merge)
            if cur not in vocab:
                vocab.append(cur)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def write_clip_tokenizer(folder: str):
    """Write and return a tiny CLIP tokenizer (vocab.json + merges.txt, as ComfyUI ships CLIP's)."""
    from transformers import CLIPTokenizer

    os.makedirs(folder, exist_ok=True)
    vocab, merges = clip_bpe_files()
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer.from_pretrained(folder, model_max_length=77, local_files_only=True)
    tok.save_pretrained(folder)
    return tok


def make_t5_tokenizer():
    """A tiny unigram T5 tokenizer: <pad>=0, </s>=1, <unk>=2 as in T5, then :data:`WORDS` and letters."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + w, -2.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,"]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _randomize(module: torch.nn.Module, std: float = 0.05):
    for p in module.parameters():
        torch.nn.init.normal_(p, std=std)
    return module


def tiny_components(seed: int = 0, tokenizer_dir: str = None) -> FluxComponents:
    """All tiny components in memory (fp32, CPU), deterministic for a ``seed``.

    The CLIP tokenizer is written to ``tokenizer_dir`` (a temporary folder when None) because
    transformers builds a BPE tokenizer from files.
    """
    import tempfile

    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok = write_clip_tokenizer(tokenizer_dir or tempfile.mkdtemp(prefix="tiny-clip-tok-"))
    t5_tok = make_t5_tokenizer()
    torch.manual_seed(seed)
    tcfg = {**configs.load("flux1-dev_transformer"), **TINY_TRANSFORMER}
    transformer = _randomize(FluxTransformer2DModel.from_config(tcfg)).eval()
    vae = AutoencoderKL.from_config({**configs.load("flux_vae"), **TINY_VAE}).eval()
    n = len(clip_tok)
    ccfg = {k: v for k, v in configs.load("clip_l").items() if k not in ("architectures", "model_type")}
    ccfg.update(TINY_CLIP, vocab_size=n, projection_dim=TINY_CLIP["hidden_size"], bos_token_id=n - 2,
                eos_token_id=n - 1, pad_token_id=n - 1)
    clip = CLIPTextModel(CLIPTextConfig(**ccfg)).eval()
    t5cfg = {k: v for k, v in configs.load("t5xxl").items() if k not in ("architectures", "model_type")}
    t5cfg.update(TINY_T5, vocab_size=len(t5_tok))
    t5 = _randomize(T5EncoderModel(T5Config(**t5cfg)), std=0.2).eval()
    return FluxComponents(transformer=transformer, vae=vae, text_encoder=clip, text_encoder_2=t5,
                          tokenizer=clip_tok, tokenizer_2=t5_tok, scheduler=make_scheduler(True))


@dataclass
class TinyFiles:
    """Where :func:`write_tiny_set` put each file (absolute paths)."""
    root: str
    diffusers_folder: str
    transformer: str
    vae: str
    clip: str
    t5: str
    clip_tokenizer: str
    t5_tokenizer: str


def write_tiny_set(out_dir: str, seed: int = 0) -> TinyFiles:
    """Write the tiny set the way ComfyUI users keep models::

        OUT/diffusers/tiny-flux/                    diffusers folder (model_index.json)
        OUT/diffusion_models/tiny-flux.safetensors  BFL keys with model.diffusion_model.
        OUT/vae/tiny-flux-vae.safetensors           ldm keys
        OUT/text_encoders/tiny-clip-l.safetensors   text_model.* (clip_l.safetensors' layout)
        OUT/text_encoders/tiny-t5.safetensors       shared + encoder.* (ComfyUI's t5xxl layout)
        OUT/tokenizers/tiny-clip-l/, tiny-t5/       tokenizer folders
    """
    from safetensors.torch import save_file

    root = os.path.abspath(out_dir)
    p = TinyFiles(root=root, diffusers_folder=os.path.join(root, "diffusers", "tiny-flux"),
                  transformer=os.path.join(root, "diffusion_models", "tiny-flux.safetensors"),
                  vae=os.path.join(root, "vae", "tiny-flux-vae.safetensors"),
                  clip=os.path.join(root, "text_encoders", "tiny-clip-l.safetensors"),
                  t5=os.path.join(root, "text_encoders", "tiny-t5.safetensors"),
                  clip_tokenizer=os.path.join(root, "tokenizers", "tiny-clip-l"),
                  t5_tokenizer=os.path.join(root, "tokenizers", "tiny-t5"))
    c = tiny_components(seed, tokenizer_dir=p.clip_tokenizer)
    c.pipeline().save_pretrained(p.diffusers_folder, safe_serialization=True)
    c.tokenizer_2.save_pretrained(p.t5_tokenizer)
    for path in (p.transformer, p.vae, p.clip):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    meta = {"format": "pt", "source": "realiz3d tiny Flux-family test model"}

    def plain(sd):   # safetensors refuses views that share storage
        return {k: v.detach().contiguous().clone() for k, v in sd.items()}

    save_file(plain(diffusers_to_bfl(c.transformer.state_dict(), prefix=BFL_PREFIX)), p.transformer, meta)
    save_file(plain(diffusers_to_ldm_vae(c.vae.state_dict())), p.vae, meta)
    # real clip_l files keep transformers 4's text_model. level, whatever transformers wrote
    clip_sd = {("" if k.startswith("text_model.") else "text_model.") + k: v
               for k, v in c.text_encoder.state_dict().items() if not k.endswith("position_ids")}
    save_file(plain(clip_sd), p.clip, meta)
    t5_sd = {k: v for k, v in c.text_encoder_2.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(plain(t5_sd), p.t5, meta)
    return p
