"""A process-wide cache of loaded components, so that a second prompt or a second node with the
same files reuses the same objects instead of loading them again.

The key is (kind, each file's resolved path, size and mtime, dtype, device, extra): a file
replaced on disk gets a new key and is loaded afresh (the stale entry for the same paths is
dropped at that moment, so two versions never sit in memory). Folders (diffusers models) are
keyed by every file under them. ``release``/``release_all`` drop entries when the host asks to
free memory; the objects go when their last user lets go of them.

Thread-safe: one lock guards the table, and one lock per key makes concurrent requests for the
same key wait for a single load rather than load twice.
"""
from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch

FileStamp = Tuple[str, int, int]        # (real path, size in bytes, mtime in ns)
CacheKey = Tuple[str, Tuple[FileStamp, ...], str, str, Tuple]


def _stamps(path: str) -> List[FileStamp]:
    real = os.path.realpath(path)
    if os.path.isdir(real):
        out = []
        for dirpath, dirnames, filenames in os.walk(real):
            dirnames.sort()
            for name in sorted(filenames):
                st = os.stat(os.path.join(dirpath, name))
                out.append((os.path.join(dirpath, name), st.st_size, st.st_mtime_ns))
        return out
    st = os.stat(real)
    return [(real, st.st_size, st.st_mtime_ns)]


def make_key(kind: str, paths: Iterable[Optional[str]], dtype: Any, device: Any, extra: Tuple = ()) -> CacheKey:
    """The cache key of loading ``paths`` (files or folders; None entries allowed) as ``kind``."""
    stamps: List[FileStamp] = []
    for p in paths:
        stamps.extend(_stamps(p) if p else [("", 0, 0)])
    return (kind, tuple(stamps), str(dtype).replace("torch.", ""), str(torch.device(device)), tuple(extra))


def _identity(key: CacheKey):
    """The key without sizes and mtimes: the same request, whatever version of the files."""
    kind, stamps, dtype, device, extra = key
    return (kind, tuple(s[0] for s in stamps), dtype, device, extra)


class ComponentCache:
    """Loaded objects by :data:`CacheKey`; ``load_count`` counts actual loads per kind.

    weak=True holds the objects weakly: an entry lives exactly as long as some user (for
    ComfyUI, its cache of node outputs) holds the object, so the host freeing its caches frees
    the model too, while every user meanwhile shares one copy.
    """

    def __init__(self, weak: bool = False):
        self._lock = threading.Lock()
        self._entries: Dict[CacheKey, Any] = weakref.WeakValueDictionary() if weak else {}
        self._key_locks: Dict[CacheKey, threading.Lock] = {}
        self.load_count: Dict[str, int] = {}

    def get_or_load(self, kind: str, paths: Iterable[Optional[str]], dtype: Any, device: Any,
                    loader: Callable[[], Any], extra: Tuple = ()) -> Any:
        """The cached object for these files, or ``loader()``'s result, stored. A loader that
        raises stores nothing (the next call tries again)."""
        key = make_key(kind, list(paths), dtype, device, extra)
        with self._lock:
            obj = self._entries.get(key)
            if obj is not None:
                return obj
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                obj = self._entries.get(key)   # another thread loaded it while we waited
                if obj is not None:
                    return obj
                stale = [k for k in self._entries if _identity(k) == _identity(key)]
                for k in stale:
                    del self._entries[k]
            obj = loader()
            with self._lock:
                self._entries[key] = obj
                self.load_count[kind] = self.load_count.get(kind, 0) + 1
                self._key_locks.pop(key, None)
            return obj

    def release(self, key: CacheKey) -> bool:
        """Drop one entry; True if it was cached."""
        with self._lock:
            return self._entries.pop(key, None) is not None

    def release_all(self) -> int:
        """Drop every entry; returns how many there were."""
        with self._lock:
            n = len(self._entries)
            self._entries.clear()
            return n

    def keys(self) -> List[CacheKey]:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


CACHE = ComponentCache()   # the process-wide instance the node layer uses


def get_or_load(kind, paths, dtype, device, loader, extra=()):
    """:meth:`ComponentCache.get_or_load` on the process-wide :data:`CACHE`."""
    return CACHE.get_or_load(kind, paths, dtype, device, loader, extra)


def release(key: CacheKey) -> bool:
    return CACHE.release(key)


def release_all() -> int:
    return CACHE.release_all()
