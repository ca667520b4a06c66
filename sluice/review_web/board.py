"""What the web app knows of the review chain: the latest snapshot of every case, what became of each
verdict, and final decisions, fed by a background consumer of the flow's output topics.

The flow is the only authority: the board is a read model rebuilt from
``review-cases`` (every change of every case, read from the start at boot; a
compacted topic keeps that cheap), ``review-rejections`` and
``final-decisions`` (read committed, so a page never shows an outcome the flow
could still roll back). A verdict the page sent is ``pending`` until a case
snapshot lists it (``accepted``) or a rejection names it (``rejected``).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from models.review_case import Verdict
from models.review_wire import case_from_body
from operators.kafka.admin import list_partitions, log
from operators.kafka.connection import KafkaConnection

Body = dict[str, Any]
KEEP_CLOSED = 20_000  # closed cases still viewable; older ones are dropped from memory
KEEP_VERDICTS = 200_000
KEEP_RATIONALES = 50_000
logger = logging.getLogger("sluice.review_web")


@dataclass(frozen=True, slots=True)
class VerdictState:
    """What became of a verdict: ``pending``, ``accepted`` (with its effect) or ``rejected`` (with why)."""

    verdict_id: str
    case_id: str
    reviewer: str
    status: str
    detail: str = ""


class ReviewBoard:
    """The read model (thread-safe: the feed writes, request handlers read)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cases: dict[str, Body] = {}
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._verdicts: OrderedDict[str, VerdictState] = OrderedDict()
        self._finals: dict[str, Body] = {}
        self._rationales: OrderedDict[str, str] = OrderedDict()
        self._pending: dict[str, set[str]] = {}  # reviewer -> cases with a verdict of theirs in flight
        self.ready = threading.Event()

    # written by the feed
    def on_case(self, body: Body) -> None:
        """A ``review-cases`` snapshot; one the pages could not show raises before anything is kept (the
        topic is compacted and read from its start: a kept bad record would break every queue for good)."""
        _require_object(body)
        case_from_body(body)
        if not isinstance(body["transaction"]["event_id"], str):
            raise TypeError("transaction.event_id is not a string")
        case_id = body["case_id"]
        settled = _accepted(body)
        with self._lock:
            self._cases[case_id] = body
            self._settle_all(case_id, settled)
            if body["status"] == "closed":
                self._closed[case_id] = None
                while len(self._closed) > KEEP_CLOSED:
                    old, _ = self._closed.popitem(last=False)
                    self._cases.pop(old, None)
                    self._finals.pop(old, None)

    def on_rejection(self, body: Body) -> None:
        _require_object(body)
        verdict_id, case_id, reviewer, reason = body["verdict_id"], body["case_id"], body["reviewer"], body["reason"]
        with self._lock:
            self._settle(verdict_id, case_id, reviewer, "rejected", reason)

    def on_final(self, body: Body) -> None:
        # a final carries the chain's history too: it settles the verdicts in it whichever topic arrives first,
        # so a page never shows the final decision beside its own verdict still "pending"
        _require_object(body)
        case_id = body["case_id"]
        if body["decision"] not in ("approve", "decline", "hold"):
            raise ValueError(f"final decision {body['decision']!r} is not approve, decline or hold")
        settled = _accepted(body)
        with self._lock:
            self._finals[case_id] = body
            self._settle_all(case_id, settled)

    def _settle_all(self, case_id: str, settled: list[tuple[str, str, str]]) -> None:
        for verdict_id, reviewer, effect in settled:
            self._settle(verdict_id, case_id, reviewer, "accepted", effect)

    def on_rationale(self, body: Body) -> None:
        _require_object(body)
        event_id, text = body.get("event_id"), body.get("rationale")
        if isinstance(event_id, str) and isinstance(text, str):
            with self._lock:
                self._rationales[event_id] = text[:4000]
                while len(self._rationales) > KEEP_RATIONALES:
                    self._rationales.popitem(last=False)

    def _settle(self, verdict_id: str, case_id: str, reviewer: str, status: str, detail: str) -> None:
        known = self._verdicts.get(verdict_id)
        if known is not None and known.status != "pending":
            return  # the first outcome stands (a re-sent duplicate's rejection does not undo an acceptance)
        self._pending.get(reviewer, set()).discard(case_id)
        self._verdicts[verdict_id] = VerdictState(verdict_id, case_id, reviewer, status, detail)
        while len(self._verdicts) > KEEP_VERDICTS:
            self._verdicts.popitem(last=False)

    # written by request handlers
    def submitted(self, verdict: Verdict) -> None:
        with self._lock:
            if verdict.verdict_id not in self._verdicts:
                self._verdicts[verdict.verdict_id] = VerdictState(
                    verdict.verdict_id, verdict.case_id, verdict.reviewer, "pending"
                )
                self._pending.setdefault(verdict.reviewer, set()).add(verdict.case_id)

    # read by request handlers
    def case(self, case_id: str) -> Body | None:
        with self._lock:
            body = self._cases.get(case_id)
            if body is None:
                return None
            rationale = body.get("rationale") or self._rationales.get(body["transaction"]["event_id"])
            return body if rationale == body.get("rationale") else {**body, "rationale": rationale}

    def final(self, case_id: str) -> Body | None:
        with self._lock:
            return self._finals.get(case_id)

    def verdict(self, verdict_id: str) -> VerdictState | None:
        with self._lock:
            return self._verdicts.get(verdict_id)

    def queue(self, role: str, reviewer: str, limit: int = 200) -> tuple[list[Body], int]:
        """Open cases whose open step needs ``role`` and that ``reviewer`` may still act on (four-eyes; none
        with a verdict of theirs still in flight), most urgent first; the first ``limit`` and how many there are."""
        with self._lock:
            mine = []
            waiting = self._pending.get(reviewer, set())
            for body in self._cases.values():
                if body["status"] == "closed" or body["case_id"] in waiting:
                    continue
                step = body["steps"][body["current_step"]]
                if step["required_role"] == role and not any(s["reviewer"] == reviewer for s in body["steps"]):
                    mine.append(body)
        mine.sort(key=lambda b: b["steps"][b["current_step"]]["deadline"] or float("inf"))
        return mine[:limit], len(mine)

    def counts(self) -> dict[str, int]:
        with self._lock:
            open_cases = sum(1 for b in self._cases.values() if b["status"] != "closed")
            return {"open": open_cases, "closed_kept": len(self._closed), "finals": len(self._finals)}


def _require_object(body: object) -> None:
    if not isinstance(body, dict):
        raise TypeError(f"a JSON object was expected, not {type(body).__name__}")


def _accepted(body: Body) -> list[tuple[str, str, str]]:
    """``(verdict id, reviewer, effect)`` of each accepted verdict in a snapshot's history (raises if malformed)."""
    history = body.get("history", ())
    if not isinstance(history, list):
        raise TypeError("history is not a list")
    return [(str(e["verdict_id"]), str(e["reviewer"]), str(e["effect"])) for e in history if e["kind"] == "verdict"]


class Feed(threading.Thread):
    """Consumes the flow's outputs into a :class:`ReviewBoard`; sets ``board.ready`` once it has read
    everything that was there when it started."""

    def __init__(self, conn: KafkaConnection, board: ReviewBoard, topics: dict[str, str]) -> None:
        super().__init__(name="review-feed", daemon=True)
        self.conn, self.board, self.topics = conn, board, topics
        self._stopping = threading.Event()
        self.error: str | None = None

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        handlers = {
            self.topics["cases"]: self.board.on_case,
            self.topics["rejections"]: self.board.on_rejection,
            self.topics["final"]: self.board.on_final,
        }
        if self.topics.get("rationales"):
            handlers[self.topics["rationales"]] = self.board.on_rationale
        consumer = Consumer(
            self.conn.consumer_config(
                **{
                    "group.id": "sluice-review-web",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "isolation.level": "read_committed",
                    "auto.offset.reset": "earliest",
                    "logger": log,
                }
            )
        )
        parts = [TopicPartition(t, p, 0) for t in handlers for p in list_partitions(self.conn, t)]
        consumer.assign(parts)
        waiting = {(tp.topic, tp.partition) for tp in parts}
        try:
            while not self._stopping.is_set():
                for msg in consumer.consume(500, 0.1):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            waiting.discard((msg.topic() or "", msg.partition() or 0))
                            if not waiting:
                                self.board.ready.set()
                        continue
                    try:
                        body = orjson.loads(msg.value() or b"{}")
                        handlers[msg.topic() or ""](body)
                    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                        logger.warning("skipping a malformed record on %s: %s", msg.topic(), exc)
        except Exception as exc:  # noqa: BLE001 - reported by /healthz, not a silent dead thread
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("the review feed stopped: %s", self.error)
        finally:
            consumer.close()
