"""A live vector index inside the dataflow: documents in, searchable within the same batch.

Document events and queries meet in one stateful step (keyed by the index's
name): a query is answered from every document event processed before it, and
a document is searchable from the next batch after it arrives (the two
streams have no order between them within a batch). Upserts
are chunked and embedded in batches; a new version or a delete removes the old
chunks. The index (vectors included) is the step's snapshot, so a resumed flow
holds exactly the documents whose events were processed before the checkpoint
and replays the rest: no re-embedding of the corpus at start-up, and no lost or
ghost chunks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from state.vector_index import Hit, VectorIndex

Q = TypeVar("Q")
T = TypeVar("T")


class IndexableDocument(Protocol):
    """What the index needs of a document event: identity, version, metadata, upsert or delete."""

    @property
    def doc_id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def title(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def deleted(self) -> bool: ...


D = TypeVar("D", bound=IndexableDocument)

EMBED_BATCH = 128


@dataclass(frozen=True, slots=True)
class IndexChange:
    """What one document event did to the index (``applied`` is False for a stale version)."""

    doc_id: str
    version: int
    op: str
    chunks: int
    applied: bool
    doc_count: int
    chunk_count: int
    embed_ms: float
    at: float


@dataclass(frozen=True)
class IndexOut(Generic[Q]):
    """Streams out of :func:`live_vector_index`."""

    hits: Stream[tuple[Q, list[Hit]]]
    changes: Stream[tuple[Any, IndexChange]]  # (the tag that came with the document event, what it did)


class _LiveIndexLogic(StatefulBatchLogic[tuple[str, Any], tuple[str, Any], dict[str, Any]], Generic[D, Q]):
    def __init__(
        self,
        dim: int,
        resume: dict[str, Any] | None,
        embed: Callable[[list[str]], np.ndarray],
        chunk: Callable[[D], list[tuple[str, str]]],
        query_vector: Callable[[Q], np.ndarray],
        k: int,
        model: str,
    ) -> None:
        if resume and resume.get("model", model) != model:
            raise ValueError(
                f"the checkpointed index holds vectors of {resume['model']!r} but the flow embeds with {model!r}; "
                "start from a fresh recovery directory so the documents are embedded again"
            )
        self.index = VectorIndex.from_state(resume) if resume else VectorIndex(dim)
        self.model = model
        self.embed = embed
        self.chunk = chunk
        self.query_vector = query_vector
        self.k = k

    def _apply_documents(self, tagged: list[tuple[D, Any]]) -> list[tuple[str, Any]]:
        t0 = time.perf_counter()
        events = [e for e, _ in tagged]
        upserts = [e for e in events if not e.deleted]
        pieces = {id(e): self.chunk(e) for e in upserts}
        to_embed = [embed_text for e in upserts for _, embed_text in pieces[id(e)]]
        vectors = np.concatenate(
            [self.embed(to_embed[i : i + EMBED_BATCH]) for i in range(0, len(to_embed), EMBED_BATCH)]
            or [np.zeros((0, self.index.dim), dtype=np.float32)]
        )
        embed_ms = (time.perf_counter() - t0) * 1000.0
        out: list[tuple[str, Any]] = []
        row = 0
        for e, tag in tagged:
            if e.deleted:
                applied, n = self.index.delete(e.doc_id, e.version), 0
            else:
                texts = [text for text, _ in pieces[id(e)]]
                n = len(texts)
                applied = self.index.upsert(e.doc_id, e.version, e.title, e.source, texts, vectors[row : row + n])
                row += n
            change = IndexChange(
                e.doc_id,
                e.version,
                "delete" if e.deleted else "upsert",
                n,
                applied,
                self.index.doc_count,
                self.index.chunk_count,
                embed_ms,
                time.time(),
            )
            out.append(("change", (tag, change)))
        return out

    def _search(self, queries: list[Q]) -> list[tuple[str, Any]]:
        vectors = np.stack([self.query_vector(q) for q in queries])
        return [("hits", (q, hits)) for q, hits in zip(queries, self.index.search(vectors, self.k), strict=True)]

    def on_batch(self, values: list[tuple[str, Any]]) -> tuple[list[tuple[str, Any]], bool]:
        out: list[tuple[str, Any]] = []
        run: list[Any] = []
        kind = None
        for tag, value in [*values, ("end", None)]:
            if tag != kind and run:
                out.extend(self._apply_documents(run) if kind == "doc" else self._search(run))
                run = []
            kind = tag
            run.append(value)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> dict[str, Any]:
        return {**self.index.state(), "model": self.model}


@operator
def live_vector_index(
    step_id: str,
    documents: Stream[tuple[D, T]],
    queries: Stream[Q],
    embed: Callable[[list[str]], np.ndarray],
    chunk: Callable[[D], list[tuple[str, str]]],
    query_vector: Callable[[Q], np.ndarray],
    dim: int,
    k: int = 4,
    name: str = "kb",
    model: str = "",
) -> IndexOut[Q]:
    """Keep a vector index of ``documents`` and answer ``queries`` with their top-``k`` chunks.

    ``documents`` carry a tag each (e.g. their Kafka position) that comes back
    with the :class:`IndexChange` they caused. ``chunk`` turns an upsert into
    ``(stored text, text to embed)`` pairs;
    ``embed`` embeds a list of texts (unit rows); ``query_vector`` gives a
    query's (already computed) embedding. ``model`` names the embedding model;
    a checkpoint made with another model is refused at resume.

    ```python
    out = live_vector_index("kb", docs, questions, encoder.encode, chunker, lambda q: q.vector, dim=384)
    ```
    """
    docs = op.map("doc_in", documents, lambda d: (name, ("doc", d)))
    asks = op.map("query_in", queries, lambda q: (name, ("query", q)))
    merged = op.merge("in", docs, asks)

    def builder(resume: dict[str, Any] | None) -> _LiveIndexLogic[D, Q]:
        return _LiveIndexLogic(dim, resume, embed, chunk, query_vector, k, model)

    results = op.stateful_batch("index", merged, builder)
    split = op.branch("is_hits", results, lambda kv: kv[1][0] == "hits")
    return IndexOut(
        hits=op.map("hits", split.trues, lambda kv: kv[1][1]),
        changes=op.map("changes", split.falses, lambda kv: kv[1][1]),
    )
