"""What a live index reports about itself: one change per document event, and readiness when its backlog drains."""

from __future__ import annotations

from dataclasses import dataclass


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


@dataclass(frozen=True, slots=True)
class IndexReady:
    """The backlog drained: every document event that reached the index is searchable."""

    doc_count: int
    chunk_count: int
    documents_indexed: int  # in the backlog that just drained
    backlog_seconds: float  # from the oldest of them arriving to now
    at: float
    event: str = "ready"
