"""The assistant's knowledge: chunks searchable by meaning and by words, with their sentences.

Retrieval is hybrid and diversified:

1. **Dense** top candidates from the vector index (cosine of unit vectors) and
   **lexical** top candidates from BM25 over the same chunks.
2. **Reciprocal-rank fusion** (``1 / (60 + rank)`` summed over both lists): no
   score calibration between the two is needed, and a chunk both agree on wins.
3. **One passage per document** in the top ``k``, unless a document's next chunk
   beats the best remaining other document by a wide margin: three slices of the
   same long topic used to crowd out the specific one.

Every chunk keeps its sentences and their vectors (computed once, when the
document is indexed), so an extractive answer is a few dot products at query
time. Pure state: embedding happens outside and vectors come in; the state is
plain arrays and dicts (checkpointed as a whole).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from state.lexical_index import LexicalIndex, terms
from state.vector_index import Hit, VectorIndex

RRF_K = 60.0


@dataclass(frozen=True, slots=True)
class ChunkInput:
    """A chunk to index: its text, section heading, sentences, and vectors for both."""

    text: str
    heading: str
    sentences: tuple[str, ...]
    vector: np.ndarray
    sentence_vectors: np.ndarray


@dataclass(frozen=True, slots=True)
class Retrieved:
    """A passage found for a query, with the evidence for it and its sentences."""

    hit: Hit  # hit.score is the dense cosine
    heading: str
    fused: float
    lexical: float
    sentences: tuple[str, ...]
    sentence_vectors: np.ndarray
    query_terms: tuple[tuple[str, float], ...] = ()  # the query's terms with their idf in this index


class KnowledgeIndex:
    """Documents as chunks in a vector index and a BM25 index, replaced or removed per document.

    >>> import numpy as np
    >>> kb = KnowledgeIndex(dim=2)
    >>> v = lambda *xs: np.array([xs], dtype=np.float32)
    >>> kb.upsert("with", 1, "The with statement", "t", [
    ...     ChunkInput("with calls __enter__.", "", ("with calls __enter__.",), v(1, 0)[0], v(1, 0))])
    True
    >>> kb.upsert("for", 1, "The for statement", "t", [
    ...     ChunkInput("for loops over items.", "", ("for loops over items.",), v(0, 1)[0], v(0, 1))])
    True
    >>> [r.hit.doc_id for r in kb.search(v(0.6, 0.8), ["__enter__"], k=2)[0]]
    ['with', 'for']
    """

    def __init__(self, dim: int, use_gpu: bool | None = None) -> None:
        self.dim = dim
        self.vectors = VectorIndex(dim, use_gpu)
        self.lexical = LexicalIndex()
        self.chunk_info: dict[int, tuple[str, tuple[str, ...], np.ndarray]] = {}  # id -> heading, sentences, vectors

    @property
    def doc_count(self) -> int:
        return self.vectors.doc_count

    @property
    def chunk_count(self) -> int:
        return self.vectors.chunk_count

    def version_of(self, doc_id: str) -> int | None:
        return self.vectors.version_of(doc_id)

    def _forget_chunks(self, ids: list[int]) -> None:
        for cid in ids:
            self.lexical.remove(cid)
            self.chunk_info.pop(cid, None)

    def upsert(self, doc_id: str, version: int, title: str, source: str, chunks: list[ChunkInput]) -> bool:
        """Replace ``doc_id``'s chunks; an older version than the one held is ignored (returns False)."""
        old = self.vectors.chunk_ids(doc_id)
        vectors = np.stack([c.vector for c in chunks]) if chunks else np.zeros((0, self.dim), np.float32)
        if not self.vectors.upsert(doc_id, version, title, source, [c.text for c in chunks], vectors):
            return False
        self._forget_chunks(old)
        for cid, chunk in zip(self.vectors.chunk_ids(doc_id), chunks, strict=True):
            self.lexical.add(cid, f"{title} {chunk.heading} {chunk.text}")
            self.chunk_info[cid] = (chunk.heading, chunk.sentences, chunk.sentence_vectors.astype(np.float16))
        return True

    def chunk_count_of(self, doc_id: str) -> int:
        """How many chunks ``doc_id`` has in the index (0 when it is not held)."""
        return len(self.vectors.chunk_ids(doc_id))

    def delete(self, doc_id: str, version: int) -> bool:
        old = self.vectors.chunk_ids(doc_id)
        if not self.vectors.delete(doc_id, version):
            return False
        self._forget_chunks(old)
        return True

    def search(
        self, query_vectors: np.ndarray, query_texts: list[str], k: int = 3, candidates: int = 20, margin: float = 1.5
    ) -> list[list[Retrieved]]:
        """The top ``k`` passages per query (see the module docstring); ``margin`` is how much better (fused
        score ratio) a document's second chunk must be than the next document to take a second slot."""
        dense_lists = self.vectors.search(query_vectors, candidates)
        out = []
        for qvec, dense, text in zip(query_vectors, dense_lists, query_texts, strict=True):
            weights = tuple((t, self.lexical.idf(t)) for t in dict.fromkeys(terms(text)))
            out.append(
                [
                    replace(r, query_terms=weights)
                    for r in self._fuse(qvec, dense, self.lexical.search(text, candidates), k, margin)
                ]
            )
        return out

    def _fuse(
        self, qvec: np.ndarray, dense: list[Hit], lexical: list[tuple[int, float]], k: int, margin: float
    ) -> list[Retrieved]:
        fused: dict[int, float] = {}
        for rank, hit in enumerate(dense):
            fused[hit.chunk_id] = fused.get(hit.chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
        lexical_score = dict(lexical)
        for rank, (cid, _) in enumerate(lexical):
            fused[cid] = fused.get(cid, 0.0) + 1.0 / (RRF_K + rank + 1)
        hits = {hit.chunk_id: hit for hit in dense}
        order = sorted(fused, key=lambda cid: (-fused[cid], cid))
        chosen: list[int] = []
        used_docs: set[str] = set()
        for i, cid in enumerate(order):
            if len(chosen) == k:
                break
            doc_id = self._doc_of(cid, hits)
            if doc_id in used_docs:
                rival = next((c for c in order[i + 1 :] if self._doc_of(c, hits) not in used_docs), None)
                if rival is not None and fused[cid] < margin * fused[rival]:
                    continue
            chosen.append(cid)
            used_docs.add(doc_id)
        return [self._retrieved(qvec, cid, hits, fused[cid], lexical_score.get(cid, 0.0)) for cid in chosen]

    def _doc_of(self, cid: int, hits: dict[int, Hit]) -> str:
        hit = hits.get(cid)
        return hit.doc_id if hit is not None else self.vectors.chunks[cid][0]

    def _retrieved(self, qvec: np.ndarray, cid: int, hits: dict[int, Hit], fused: float, lexical: float) -> Retrieved:
        hit = hits.get(cid)
        if hit is None:  # found by words only: its cosine is computed for the record
            doc_id, n, text = self.vectors.chunks[cid]
            doc = self.vectors.docs[doc_id]
            cosine = float(self.vectors.index.reconstruct(cid) @ np.asarray(qvec, dtype=np.float32))
            hit = Hit(cosine, doc_id, doc.title, doc.source, n, text, cid)
        heading, sentences, vectors = self.chunk_info[cid]
        return Retrieved(hit, heading, fused, lexical, sentences, vectors.astype(np.float32))

    def state(self) -> dict[str, Any]:
        return {
            "vectors": self.vectors.state(),
            "lexical": self.lexical.state(),
            "chunk_info": {cid: (h, s, v.copy()) for cid, (h, s, v) in self.chunk_info.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], use_gpu: bool | None = None) -> KnowledgeIndex:
        vectors = VectorIndex.from_state(state["vectors"], use_gpu)
        kb = cls(vectors.dim, use_gpu)
        kb.vectors = vectors
        kb.lexical = LexicalIndex.from_state(state["lexical"])
        kb.chunk_info = {cid: (h, tuple(s), np.asarray(v)) for cid, (h, s, v) in state["chunk_info"].items()}
        return kb
