"""A document-aware vector index: chunks of many documents, replaced or removed per document.

Vectors live in a faiss ``IndexIDMap2(IndexFlatIP)`` (exact inner-product
search; with unit vectors that is cosine). Chunk ids are never reused, so a
stale id can never point at a newer chunk. When CUDA and faiss-gpu are present
searches run on a GPU copy of the index, refreshed after changes.

The index's state (:meth:`VectorIndex.state`) is plain arrays and dicts: it is
what the flow checkpoints, and :meth:`VectorIndex.from_state` rebuilds an
identical index from it without re-embedding anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result."""

    score: float
    doc_id: str
    title: str
    source: str
    chunk: int
    text: str
    chunk_id: int = -1  # the index's id of the chunk (stable until the document changes)


@dataclass
class _Doc:
    version: int
    title: str
    source: str
    chunk_ids: list[int] = field(default_factory=list)


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class VectorIndex:
    """Exact top-k search over document chunks with per-document upsert and delete.

    >>> import numpy as np
    >>> idx = VectorIndex(dim=2)
    >>> idx.upsert("a", 1, "A", "test", ["x"], np.array([[1.0, 0.0]], dtype=np.float32))
    True
    >>> idx.upsert("b", 1, "B", "test", ["y"], np.array([[0.0, 1.0]], dtype=np.float32))
    True
    >>> [h.doc_id for h in idx.search(np.array([[0.9, 0.1]], dtype=np.float32), k=2)[0]]
    ['a', 'b']
    >>> idx.delete("a", 2), idx.doc_count, idx.chunk_count
    (True, 1, 1)
    """

    def __init__(self, dim: int, use_gpu: bool | None = None) -> None:
        self.dim = dim
        self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.docs: dict[str, _Doc] = {}
        self.chunks: dict[int, tuple[str, int, str]] = {}  # chunk id -> (doc id, chunk number, text)
        self.tombstones: dict[str, int] = {}  # deleted doc -> version of the delete
        self.next_id = 0
        self.use_gpu = gpu_available() if use_gpu is None else use_gpu
        self._gpu_index: Any = None
        self._gpu_resources: Any = None

    @property
    def doc_count(self) -> int:
        return len(self.docs)

    @property
    def chunk_count(self) -> int:
        return int(self.index.ntotal)

    def version_of(self, doc_id: str) -> int | None:
        """The version indexed (or deleted) last for ``doc_id``, if any."""
        doc = self.docs.get(doc_id)
        return doc.version if doc else self.tombstones.get(doc_id)

    def _is_stale(self, doc_id: str, version: int) -> bool:
        current = self.version_of(doc_id)
        return current is not None and version < current

    def _remove_chunks(self, doc_id: str) -> None:
        doc = self.docs.pop(doc_id, None)
        if doc and doc.chunk_ids:
            self.index.remove_ids(np.asarray(doc.chunk_ids, dtype=np.int64))  # type: ignore[arg-type]
            for cid in doc.chunk_ids:
                del self.chunks[cid]
            self._gpu_index = None

    def chunk_ids(self, doc_id: str) -> list[int]:
        """The ids of ``doc_id``'s chunks (empty when it is not held)."""
        doc = self.docs.get(doc_id)
        return list(doc.chunk_ids) if doc else []

    def upsert(self, doc_id: str, version: int, title: str, source: str, texts: list[str], vectors: np.ndarray) -> bool:
        """Replace ``doc_id``'s chunks; an older version than the one held is ignored (returns False)."""
        if self._is_stale(doc_id, version):
            return False
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} chunk texts for {len(vectors)} vectors")
        self._remove_chunks(doc_id)
        self.tombstones.pop(doc_id, None)
        ids = np.arange(self.next_id, self.next_id + len(texts), dtype=np.int64)
        self.next_id += len(texts)
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        self.docs[doc_id] = _Doc(version, title, source, ids.tolist())
        for n, (cid, text) in enumerate(zip(ids.tolist(), texts, strict=True)):
            self.chunks[cid] = (doc_id, n, text)
        self._gpu_index = None
        return True

    def delete(self, doc_id: str, version: int) -> bool:
        """Remove ``doc_id``; a delete older than the version held is ignored (returns False)."""
        if self._is_stale(doc_id, version):
            return False
        self._remove_chunks(doc_id)
        self.tombstones[doc_id] = version
        return True

    def _searcher(self) -> Any:
        if not self.use_gpu:
            return self.index
        if self._gpu_index is None:
            if self._gpu_resources is None:
                self._gpu_resources = faiss.StandardGpuResources()
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.index)
        return self._gpu_index

    def search(self, queries: np.ndarray, k: int = 4) -> list[list[Hit]]:
        """Top-``k`` chunks for each query row, best first."""
        if len(queries) == 0:
            return []
        if self.chunk_count == 0:
            return [[] for _ in range(len(queries))]
        scores, ids = self._searcher().search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.chunk_count))
        out = []
        for row_scores, row_ids in zip(scores.tolist(), ids.tolist(), strict=True):
            hits = []
            for score, cid in zip(row_scores, row_ids, strict=True):
                if cid < 0:
                    continue
                doc_id, n, text = self.chunks[cid]
                doc = self.docs[doc_id]
                hits.append(Hit(score, doc_id, doc.title, doc.source, n, text, cid))
            out.append(hits)
        return out

    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild this index: vectors, ids, chunk texts, documents, tombstones."""
        ids = np.fromiter(self.chunks.keys(), dtype=np.int64, count=len(self.chunks))
        vectors = self.index.reconstruct_batch(ids) if len(ids) else np.zeros((0, self.dim), dtype=np.float32)
        return {
            "dim": self.dim,
            "ids": ids,
            "vectors": vectors,
            "chunks": dict(self.chunks),
            "docs": {k: (d.version, d.title, d.source, list(d.chunk_ids)) for k, d in self.docs.items()},
            "tombstones": dict(self.tombstones),
            "next_id": self.next_id,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], use_gpu: bool | None = None) -> VectorIndex:
        """The index :meth:`state` describes."""
        idx = cls(state["dim"], use_gpu)
        if len(state["ids"]):
            idx.index.add_with_ids(np.ascontiguousarray(state["vectors"], dtype=np.float32), state["ids"])
        idx.chunks = dict(state["chunks"])
        idx.docs = {k: _Doc(v, t, s, list(c)) for k, (v, t, s, c) in state["docs"].items()}
        idx.tombstones = dict(state["tombstones"])
        idx.next_id = state["next_id"]
        return idx
