"""Frozen encoders during training: text embeddings once per caption, VAE latent distributions
once per sample, both kept on the CPU in bounded LRU caches (``train.text_cache_size``
captions, ``train.latent_cache_mb`` megabytes of latents).

A latent is drawn from the cached posterior N(mean, std) with the step's own generator
(``train.latents: sample``) or taken as its mean, so caching changes nothing in what is
trained: a sample's latent is the same whether it was cached or encoded again.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch


class TextCache:
    """(T5 tokens [B, L, C], pooled CLIP [B, P], text ids [L, 3]) per caption, LRU of ``size`` captions."""

    def __init__(self, pipe, device, max_sequence_length: int, size: int):
        self.pipe, self.device, self.max_len, self.size = pipe, device, max_sequence_length, size
        self.store: OrderedDict = OrderedDict()
        self.ids: Optional[torch.Tensor] = None
        self.encoded = 0          # encoder calls (tests check the cache)

    @torch.no_grad()
    def _encode(self, caption: str):
        embeds, pooled, ids = self.pipe.encode_prompt(prompt=caption, prompt_2=None, device=self.device,
                                                      num_images_per_prompt=1, max_sequence_length=self.max_len)
        self.encoded += 1
        self.ids = ids
        return embeds[0].cpu(), pooled[0].cpu()

    def get(self, captions: list[str], dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        embeds, pooled = [], []
        for c in captions:
            if c not in self.store:
                self.store[c] = self._encode(c)
                while len(self.store) > self.size:
                    self.store.popitem(last=False)
            self.store.move_to_end(c)
            e, p = self.store[c]
            embeds.append(e), pooled.append(p)
        return (torch.stack(embeds).to(self.device, dtype), torch.stack(pooled).to(self.device, dtype),
                self.ids.to(self.device, dtype))


class LatentCache:
    """Packed VAE posterior (mean, std), each [N, T, 64] in latent-token units (shift and scale
    applied), per sample key; ``enabled=False`` encodes every time.

    Least recently used entries are evicted so that the entries kept never hold more than
    ``max_bytes`` (``train.latent_cache_mb``); an entry larger than the bound is not kept, and 0
    keeps nothing. An evicted sample is encoded again when it is drawn next (the same posterior,
    so the same latents for the same generator).
    """

    def __init__(self, pipe, device, enabled: bool = True, max_bytes: Optional[int] = None):
        self.pipe, self.device, self.enabled = pipe, device, enabled
        self.max_bytes = max_bytes            # None: no bound
        self.store: OrderedDict = OrderedDict()
        self.bytes = 0                        # what the kept entries hold
        self.encoded = 0

    @staticmethod
    def entry_bytes(entry) -> int:
        mean, std, _ = entry
        return mean.numel() * mean.element_size() + std.numel() * std.element_size()

    @torch.no_grad()
    def _encode(self, images: torch.Tensor):
        pipe = self.pipe
        vae = pipe.vae
        x = images.permute(0, 3, 1, 2).to(self.device, vae.dtype) * 2.0 - 1.0
        dist = vae.encode(x).latent_dist
        scale, shift = vae.config.scaling_factor, vae.config.shift_factor
        mean = (dist.mean - shift) * scale
        std = dist.std * scale
        n, c, h, w = mean.shape
        self.encoded += 1
        return (pipe._pack_latents(mean, n, c, h, w).float().cpu(), pipe._pack_latents(std, n, c, h, w).float().cpu(),
                (h, w))

    def dist(self, key: str, images: torch.Tensor):
        """(mean, std) [N, T, 64] float32 on the CPU, and the latent grid (h, w)."""
        if not self.enabled:
            return self._encode(images)
        if key in self.store:
            self.store.move_to_end(key)
            return self.store[key]
        entry = self._encode(images)
        size = self.entry_bytes(entry)
        if self.max_bytes is not None and size > self.max_bytes:
            return entry                      # larger than the whole cache: never kept
        self.store[key] = entry
        self.bytes += size
        while self.max_bytes is not None and self.bytes > self.max_bytes:
            _, old = self.store.popitem(last=False)
            self.bytes -= self.entry_bytes(old)
        return entry

    def ids(self, h: int, w: int, dtype) -> torch.Tensor:
        """Position ids [T, 3] of a latent grid (h, w) (before 2x2 packing)."""
        return self.pipe._prepare_latent_image_ids(1, h // 2, w // 2, self.device, dtype)


def draw(mean: torch.Tensor, std: torch.Tensor, mode: str, gen: torch.Generator) -> torch.Tensor:
    """A latent from the posterior: mean + std * N(0, 1) from ``gen`` (mode 'sample') or the mean."""
    if mode == "mean":
        return mean.clone()
    return mean + std * torch.randn(mean.shape, generator=gen)
