"""Item embeddings of a generated catalogue, computed once and cached on disk.

Embedding 100,000 item texts with MiniLM takes about three minutes on two CPU
cores (575 short texts/s int8, batches of 128), so the demo and the benchmark
embed the generated catalogue once per (seed, size, encoder) and reuse the
file under ``models/artifacts/personalize/``. The flow itself still embeds
every item that arrives on the ``catalog`` topic without a vector; this cache
only feeds the documented bulk-load path (:mod:`sluice.local.shopping`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from models.artifacts import ARTIFACTS_DIR
from models.shopping import CatalogItem

CACHE_DIR = ARTIFACTS_DIR / "personalize"
EMBED_BATCH = 128


def embed_items(items: list[CatalogItem], encode: Callable[[list[str]], np.ndarray], dim: int) -> np.ndarray:
    """Unit vectors of the items' texts, batched, in the items' order (texts sorted by length: less padding)."""
    texts = [it.text() for it in items]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for start in range(0, len(order), EMBED_BATCH):
        rows = order[start : start + EMBED_BATCH]
        out[rows] = encode([texts[i] for i in rows])
    return out


def cached_catalogue_vectors(
    items: list[CatalogItem], seed: int, encoder_name: str, encode: Callable[[list[str]], np.ndarray], dim: int
) -> np.ndarray:
    """:func:`embed_items` for a generated catalogue, read from the cache when it is there."""
    path = CACHE_DIR / f"catalogue-s{seed}-n{len(items)}-{encoder_name}.npy"
    if path.exists():
        vectors = np.load(path)
        if vectors.shape == (len(items), dim):
            return vectors
    vectors = embed_items(items, encode, dim)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")  # its own name: processes may embed the same catalogue at once
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors
