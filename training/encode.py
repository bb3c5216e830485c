"""Frozen encoders during training: text embeddings once per caption, VAE latent distributions
once per sample, both kept on the CPU in bounded LRU caches (``train.text_cache_size``
captions, ``train.latent_cache_mb`` megabytes of latents) and, with ``train.cache_dir``, on
disk (:class:`DiskCache`, bounded by ``train.cache_disk_mb``): a second run on the same data,
or a resumed one, encodes nothing. Disk keys carry the encoders' :func:`fingerprint`
(``backbone.text_id``, ``backbone.vae_id``), so runs with other text encoders or another VAE
never share entries.

A latent is drawn from the cached posterior N(mean, std) with the step's own generator
(``train.latents: sample``) or taken as its mean, so caching changes nothing in what is
trained: a sample's latent is the same whether it was cached or encoded again.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import Optional

import torch


class DiskCache:
    """Tensors by key in ``folder`` (one safetensors file per key, named by the key's digest),
    at most ``max_bytes`` in all: the least recently used files are deleted beyond that. A key
    must name its content (caption text; sample key plus a digest of the pixels), so a changed
    file is a new key, never a stale hit."""

    def __init__(self, folder: str, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        os.makedirs(folder, exist_ok=True)

    def _path(self, key: str) -> str:
        return os.path.join(self.folder, hashlib.sha256(key.encode()).hexdigest()[:40] + ".safetensors")

    def get(self, key: str) -> Optional[dict]:
        from safetensors.torch import load_file

        path = self._path(key)
        try:
            out = load_file(path)
            os.utime(path)                                    # recently used
            return out
        except Exception:                                     # absent, or a partial file of a killed run
            return None

    def put(self, key: str, tensors: dict) -> None:
        from .outputs import save_safetensors

        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if size > self.max_bytes:
            return
        try:
            save_safetensors(tensors, self._path(key))
        except OSError:
            return                                            # a full disk only costs encoding again
        self._bound()

    def _bound(self) -> None:
        files = []
        for name in os.listdir(self.folder):
            if name.endswith(".safetensors"):
                path = os.path.join(self.folder, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                files.append((st.st_mtime, st.st_size, path))
        total = sum(f[1] for f in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            try:
                os.remove(path)
                total -= size
            except OSError:
                pass


def fingerprint(*modules) -> str:
    """A digest naming the weights of ``modules`` (text encoders, a VAE) for the disk cache's keys:
    every tensor's name, shape and dtype and a strided sample of its values, so another encoder
    (another file, dtype or fine-tune) never reads this one's cached embeddings or latents. Cheap
    even for T5-XXL: at most 64 values are read per tensor."""
    h = hashlib.sha256()
    for i, m in enumerate(modules):
        if m is None:
            continue
        for name, t in list(m.state_dict().items()):
            h.update(f"{i}|{name}|{tuple(t.shape)}|{t.dtype}".encode())
            try:
                flat = t.detach().reshape(-1)
                step = max(1, flat.numel() // 64)
                h.update(flat[::step][:64].float().cpu().numpy().tobytes())
            except Exception:                 # a storage the sample cannot be read from: shape-only
                pass
    return h.hexdigest()[:16]


def content_key(key: str, images: torch.Tensor) -> str:
    """``key`` plus a digest of the pixels (what the disk cache is keyed by)."""
    data = images.detach().float().cpu().contiguous().numpy().tobytes()
    return f"{key}|{tuple(images.shape)}|{hashlib.sha256(data).hexdigest()[:24]}"


class TextCache:
    """(T5 tokens [B, L, C], pooled CLIP [B, P], text ids [L, 3]) per caption, LRU of ``size``
    captions; backbone: training.backbone.Backbone (or a FluxPipeline)."""

    def __init__(self, backbone, device, max_sequence_length: int, size: int, disk: Optional[DiskCache] = None):
        from .backbone import as_backbone
        self.backbone, self.device, self.max_len, self.size = as_backbone(backbone, device), device, \
            max_sequence_length, size
        self.store: OrderedDict = OrderedDict()
        self.disk = disk
        self.encoded = 0          # encoder calls (tests check the cache)

    def _encode(self, caption: str):
        key = f"text|{getattr(self.backbone, 'text_id', '')}|{self.max_len}|{caption}"
        hit = self.disk.get(key) if self.disk is not None else None
        if hit is not None:
            return hit["embeds"], hit["pooled"]
        embeds, pooled = self.backbone.encode_text(caption, self.max_len)
        self.encoded += 1
        if self.disk is not None:
            self.disk.put(key, {"embeds": embeds, "pooled": pooled})
        return embeds, pooled

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
                torch.zeros(embeds[0].shape[0], 3, device=self.device, dtype=dtype))


class LatentCache:
    """Packed VAE posterior (mean, std), each [N, T, 64] in latent-token units (shift and scale
    applied), per sample key; ``enabled=False`` encodes every time.

    Least recently used entries are evicted so that the entries kept never hold more than
    ``max_bytes`` (``train.latent_cache_mb``); an entry larger than the bound is not kept, and 0
    keeps nothing. An evicted sample is encoded again when it is drawn next (the same posterior,
    so the same latents for the same generator).
    """

    def __init__(self, backbone, device, enabled: bool = True, max_bytes: Optional[int] = None,
                 disk: Optional[DiskCache] = None):
        from .backbone import as_backbone
        self.backbone, self.device, self.enabled = as_backbone(backbone, device), device, enabled
        self.max_bytes = max_bytes            # None: no bound
        self.disk = disk
        self.store: OrderedDict = OrderedDict()
        self.bytes = 0                        # what the kept entries hold
        self.encoded = 0

    @staticmethod
    def entry_bytes(entry) -> int:
        mean, std, _ = entry
        return mean.numel() * mean.element_size() + std.numel() * std.element_size()

    def _encode(self, images: torch.Tensor, key: str = ""):
        vae = getattr(self.backbone, "vae_id", "")
        disk_key = content_key(f"latent|{vae}|{key}", images) if self.disk is not None else None
        hit = self.disk.get(disk_key) if disk_key else None
        if hit is not None:
            return hit["mean"], hit["std"], tuple(int(v) for v in hit["hw"].tolist())
        mean, std, hw = self.backbone.encode_images(images)
        self.encoded += 1
        if disk_key:
            self.disk.put(disk_key, {"mean": mean, "std": std, "hw": torch.tensor(hw)})
        return mean, std, hw

    def dist(self, key: str, images: torch.Tensor):
        """(mean, std) [N, T, 64] float32 on the CPU, and the latent grid (h, w)."""
        if not self.enabled:
            return self._encode(images, key)
        if key in self.store:
            self.store.move_to_end(key)
            return self.store[key]
        entry = self._encode(images, key)
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
        return self.backbone.ids(h, w, dtype)


def draw(mean: torch.Tensor, std: torch.Tensor, mode: str, gen: torch.Generator) -> torch.Tensor:
    """A latent from the posterior: mean + std * N(0, 1) from ``gen`` (mode 'sample') or the mean."""
    if mode == "mean":
        return mean.clone()
    return mean + std * torch.randn(mean.shape, generator=gen)
