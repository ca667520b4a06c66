"""The assistant's document knowledge: chunking + embedding + the hybrid index, behind one object.

The flow's live index step (:func:`operators.live_index.live_index`) and the
offline evaluation (``perf/assistant_eval.py``) both use :class:`DocumentKnowledge`,
so the evaluation measures exactly the chunks, vectors and ranking the flow
serves. A checkpoint records which encoder made its vectors; restoring it under
another one is refused (vectors of different models must not be mixed).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from models.chunking import document_chunks
from models.document import DocumentEvent
from state.index_events import IndexChange
from state.knowledge_index import ChunkInput, KnowledgeIndex, Retrieved


class Encoder(Protocol):
    name: str
    dim: int
    tokenizer: Any

    def encode(self, texts: list[str]) -> np.ndarray: ...


class Query(Protocol):
    """What a search needs of a query: its vector and the text to match words against."""

    @property
    def query(self) -> str: ...
    @property
    def vector(self) -> np.ndarray | None: ...


class DocumentKnowledge:
    """Documents chunked by section and sentence, embedded (chunks and sentences), searchable by hybrid ranking."""

    def __init__(
        self,
        encoder: Encoder,
        chunk_tokens: int = 160,
        chunk_overlap: int = 32,
        top_k: int = 3,
        state: dict[str, Any] | None = None,
    ) -> None:
        if state is not None and state.get("model") != encoder.name:
            raise ValueError(
                f"the checkpointed index holds vectors of {state.get('model')!r} but the flow embeds with "
                f"{encoder.name!r}; start from a fresh recovery directory so the documents are embedded again"
            )
        self.encoder = encoder
        self.chunk_tokens, self.chunk_overlap, self.top_k = chunk_tokens, chunk_overlap, top_k
        self.kb = KnowledgeIndex.from_state(state["kb"]) if state else KnowledgeIndex(encoder.dim)

    @property
    def doc_count(self) -> int:
        return self.kb.doc_count

    @property
    def chunk_count(self) -> int:
        return self.kb.chunk_count

    def cost(self, doc: DocumentEvent) -> int:
        """Characters to embed (a delete costs one unit)."""
        return 1 if doc.deleted else len(doc.text)

    def apply(self, docs: Sequence[DocumentEvent]) -> list[IndexChange]:
        """Chunk and embed the upserts (one encoder pass over all their chunks and distinct sentences), then apply."""
        t0 = time.perf_counter()
        tok = self.encoder.tokenizer
        chunked = {
            id(d): document_chunks(tok, d.title, d.text, self.chunk_tokens, self.chunk_overlap)
            for d in docs
            if not d.deleted
        }
        texts = list(
            dict.fromkeys(t for chunks in chunked.values() for c in chunks for t in (c.embed_text, *c.sentences))
        )
        position = {t: i for i, t in enumerate(texts)}
        vectors = self.encoder.encode(texts)
        embed_ms = round((time.perf_counter() - t0) * 1000.0, 2)
        out = []
        for d in docs:
            if d.deleted:
                # A delete of a document the index does not hold is still applied: it leaves a tombstone
                # that keeps an older version from coming back. ``chunks`` says what it removed (0 then).
                held = self.kb.chunk_count_of(d.doc_id)
                applied = self.kb.delete(d.doc_id, d.version)
                n = held if applied else 0
            else:
                inputs = [
                    ChunkInput(
                        c.text,
                        c.heading,
                        c.sentences,
                        vectors[position[c.embed_text]],
                        vectors[[position[s] for s in c.sentences]].reshape(len(c.sentences), self.encoder.dim),
                    )
                    for c in chunked[id(d)]
                ]
                applied = self.kb.upsert(d.doc_id, d.version, d.title, d.source, inputs)
                n = len(inputs) if applied else 0
            op_name = "delete" if d.deleted else "upsert"
            out.append(
                IndexChange(
                    d.doc_id, d.version, op_name, n, applied, self.doc_count, self.chunk_count, embed_ms, time.time()
                )
            )
        return out

    def answer(self, queries: Sequence[Query]) -> list[list[Retrieved]]:
        vectors = np.stack([q.vector for q in queries if q.vector is not None])
        if len(vectors) != len(queries):
            raise ValueError("search before embedding")
        return self.kb.search(vectors, [q.query for q in queries], self.top_k)

    def state(self) -> dict[str, Any]:
        return {"model": self.encoder.name, "kb": self.kb.state()}
