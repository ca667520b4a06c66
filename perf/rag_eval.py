"""Retrieval quality and index choice on the real corpus.

    python -m perf.rag_eval                 # -> perf/reports/rag_eval.json

* recall@5 of the question set in ``perf/rag_questions.json`` (a question
  counts when a chunk of one of its relevant documents is in the top 5),
  through the same chunker, encoder and :class:`state.vector_index.VectorIndex`
  the flow uses;
* index types on the corpus vectors: exact flat vs HNSW vs IVF — recall@10
  against exact search and query latency, batch 1 and batch 64;
* where exact (flat) search stops being fine: latency at 10k..1M vectors
  (corpus vectors plus noise, so the distribution stays realistic).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import orjson

from models.chunking import document_chunks
from models.document import DocumentEvent
from models.text_encoder import TextEncoder, shared_encoder
from perf.summary import REPORTS
from sluice.local.corpus import QUESTIONS_PATH, load_corpus
from sluice.settings import AssistantSettings
from state.vector_index import VectorIndex

REPORT = REPORTS / "rag_eval.json"


@dataclass
class CorpusIndex:
    index: VectorIndex
    chunks: int
    embed_s: float


def build_corpus_index(encoder: TextEncoder, docs: list[DocumentEvent], settings: AssistantSettings) -> CorpusIndex:
    """Chunk, embed and index ``docs`` exactly as the flow does."""
    idx = VectorIndex(encoder.dim, use_gpu=False)
    t0 = time.perf_counter()
    for doc in docs:
        pieces = document_chunks(encoder.tokenizer, doc.title, doc.text, settings.chunk_tokens, settings.chunk_overlap)
        vectors = np.concatenate(
            [encoder.encode([e for _, e in pieces[i : i + 64]]) for i in range(0, len(pieces), 64)]
        )
        idx.upsert(doc.doc_id, doc.version, doc.title, doc.source, [t for t, _ in pieces], vectors)
    return CorpusIndex(idx, idx.chunk_count, time.perf_counter() - t0)


def recall_at(
    index: VectorIndex, encoder: TextEncoder, questions: list[dict[str, Any]], k: int = 5
) -> dict[str, float]:
    """Share of questions with a relevant document among the top-``k`` chunks, overall and per kind."""
    vectors = encoder.encode([q["question"] for q in questions])
    results = index.search(vectors, k)
    hits: dict[str, list[bool]] = {}
    for q, found in zip(questions, results, strict=True):
        ok = any(h.doc_id in q["relevant"] for h in found)
        hits.setdefault("all", []).append(ok)
        hits.setdefault(q["kind"], []).append(ok)
    return {kind: round(sum(v) / len(v), 4) for kind, v in hits.items()}


def _timed_search(index: faiss.Index, queries: np.ndarray, k: int, batch: int, repeats: int = 3) -> float:
    """Median milliseconds per query at the given batch size."""
    per_query = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, len(queries), batch):
            index.search(queries[i : i + batch], k)
        per_query.append((time.perf_counter() - t0) * 1000.0 / len(queries))
    return float(np.median(per_query))


def compare_index_types(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> list[dict[str, object]]:
    """Flat vs HNSW vs IVF on the same vectors: recall@k against exact search, and speed."""
    dim = vectors.shape[1]
    flat = faiss.IndexFlatIP(dim)
    flat.add(vectors)
    _, truth = flat.search(queries, k)
    nlist = max(4, int(np.sqrt(len(vectors))))
    candidates: list[tuple[str, faiss.Index]] = [("Flat (exact)", flat)]
    hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efSearch = 64
    candidates.append(("HNSW32 efSearch=64", hnsw))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    candidates.append((f"IVF{nlist} nprobe=8", ivf))
    rows: list[dict[str, object]] = []
    for name, index in candidates:
        t0 = time.perf_counter()
        if index is not flat:
            if not index.is_trained:
                index.train(vectors)
            index.add(vectors)
            if isinstance(index, faiss.IndexIVFFlat):
                index.nprobe = 8
        build_s = time.perf_counter() - t0
        _, found = index.search(queries, k)
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found.tolist(), truth.tolist(), strict=True)]))
        rows.append(
            {
                "index": name,
                "vectors": len(vectors),
                f"recall@{k}_vs_exact": round(recall, 4),
                "build_s": round(build_s, 3),
                "ms_per_query_batch1": round(_timed_search(index, queries, k, 1), 4),
                "ms_per_query_batch64": round(_timed_search(index, queries, k, 64), 4),
            }
        )
    return rows


def flat_scaling(base: np.ndarray, queries: np.ndarray, sizes: list[int], seed: int = 0) -> list[dict[str, object]]:
    """Exact-search latency as the index grows (base vectors plus small noise, re-normalised)."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for n in sizes:
        reps = base[rng.integers(0, len(base), n)] + rng.normal(0, 0.05, (n, base.shape[1])).astype(np.float32)
        reps /= np.linalg.norm(reps, axis=1, keepdims=True)
        flat = faiss.IndexFlatIP(base.shape[1])
        flat.add(reps)
        rows.append(
            {
                "vectors": n,
                "memory_mb": round(n * base.shape[1] * 4 / 2**20, 1),
                "ms_per_query_batch1": round(_timed_search(flat, queries[:64], 10, 1, repeats=1), 3),
                "ms_per_query_batch64": round(_timed_search(flat, queries, 10, 64, repeats=1), 3),
            }
        )
        del flat, reps
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPORT)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    args = parser.parse_args(argv)
    settings = AssistantSettings.from_env()
    docs = load_corpus()
    questions = orjson.loads(QUESTIONS_PATH.read_bytes())
    by_encoder = {}
    for int8 in (False, True):
        encoder = shared_encoder("cpu", int8)
        built = build_corpus_index(encoder, docs, settings)
        by_encoder[encoder.name] = {
            "chunks_per_s": round(built.chunks / built.embed_s, 1),
            "embed_s": round(built.embed_s, 2),
            "recall@5": recall_at(built.index, encoder, questions, 5),
            "recall@1": recall_at(built.index, encoder, questions, 1),
        }
        print(f"{len(docs)} documents -> {built.chunks} chunks;", encoder.name, by_encoder[encoder.name])
    state = built.index.state()
    vectors = np.ascontiguousarray(state["vectors"], dtype=np.float32)
    queries = encoder.encode([q["question"] for q in questions])
    types = compare_index_types(vectors, queries)
    for row in types:
        print(row)
    scaling = flat_scaling(vectors, queries, [int(s) for s in args.sizes.split(",")])
    for row in scaling:
        print(row)
    report = {
        "corpus": {"documents": len(docs), "chunks": built.chunks},
        "chunking": {"tokens": settings.chunk_tokens, "overlap": settings.chunk_overlap},
        "questions": len(questions),
        "retrieval_by_encoder": by_encoder,
        "index_types": types,
        "flat_scaling": scaling,
        "machine": "2-core shared dev VM, CPU only",
    }
    args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
