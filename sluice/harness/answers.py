"""Collect request/answer traffic of any flow: end-to-end latency and the per-stage breakdown answers carry.

:class:`sluice.harness.collector.BackgroundCollector` reads fraud decisions;
this reads any answers that carry an id field, ``sent_at`` (the request's send
time, ms) and optionally ``latency_ms`` (the flow's own per-stage timings), in a
child process so it does not share the sender's GIL. End to end is the answer's
arrival at the collector minus ``sent_at``; answers to requests sent in the
first ``warmup_s`` are counted but not timed.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from operators.kafka.admin import list_partitions, log
from operators.kafka.connection import KafkaConnection
from sluice.harness.collector import latency_histogram, latency_summary, poll_batch


@dataclass
class Answers:
    """What came back: distinct answers, duplicates, end-to-end and per-stage latency percentiles (ms)."""

    answered: int = 0
    duplicates: int = 0
    first_ms: float = 0.0
    last_ms: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    stages_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    flags: dict[str, int] = field(default_factory=dict)
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)  # answers by id, when asked to keep them
    cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        span = (self.last_ms - self.first_ms) / 1000.0
        return self.answered / span if span > 0 else 0.0


def collect_answers(
    connection: KafkaConnection,
    topic: str,
    id_field: str,
    expected: int,
    timeout_s: float,
    warmup_s: float = 0.0,
    keep: bool = False,
    idle_stop_s: float = 10.0,
    ready: Any = None,
) -> Answers:
    """Read ``topic`` from its current end until ``expected`` distinct answers, ``timeout_s``, or ``idle_stop_s`` of silence."""
    cpu0 = time.process_time()
    consumer = Consumer(
        connection.consumer_config(**{"group.id": "sluice-answers", "enable.auto.commit": False, "logger": log})
    )
    parts = [TopicPartition(topic, p) for p in list_partitions(connection, topic)]
    ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
    consumer.assign([TopicPartition(topic, tp.partition, end) for tp, end in zip(parts, ends, strict=True)])
    poll_batch(consumer, 0.5)
    warm_until = time.time() * 1000.0 + warmup_s * 1000.0
    if ready is not None:
        ready.set()
    out = Answers()
    seen: set[str] = set()
    e2e = latency_histogram()
    stages: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < expected and time.monotonic() < deadline:
        msgs = poll_batch(consumer, 0.1)
        now = time.time() * 1000.0
        if not msgs and out.last_ms and now - out.last_ms > idle_stop_s * 1000:
            break
        for msg in msgs:
            if msg.error() is not None:
                continue
            body = orjson.loads(msg.value() or b"{}")
            ident = str(body.get(id_field))
            if ident in seen:
                out.duplicates += 1
                continue
            seen.add(ident)
            out.first_ms = out.first_ms or now
            out.last_ms = now
            for flag in body.get("flags", []):
                out.flags[flag] = out.flags.get(flag, 0) + 1
            if keep:
                out.kept[ident] = body
            if body.get("sent_at", 0.0) >= warm_until:
                e2e.record_value(max(1, int((now - body["sent_at"]) * 1000)))
                for stage, ms in body.get("latency_ms", {}).items():
                    stages.setdefault(stage, latency_histogram()).record_value(max(1, int(ms * 1000)))
    consumer.close()
    out.answered = len(seen)
    out.latency_ms = latency_summary(e2e)
    out.stages_ms = {stage: latency_summary(h) for stage, h in stages.items()}
    out.cpu_s = time.process_time() - cpu0
    return out


def _run(queue: Any, ready: Any, kwargs: dict[str, Any]) -> None:
    queue.put(collect_answers(**kwargs, ready=ready))


class AnswerCollector:
    """:func:`collect_answers` in a child process; the constructor returns once it is reading."""

    def __init__(self, **kwargs: Any) -> None:
        ctx = mp.get_context("spawn")
        self._queue: Any = ctx.Queue()
        ready = ctx.Event()
        self._proc = ctx.Process(target=_run, args=(self._queue, ready, kwargs), daemon=True)
        self._proc.start()
        if not ready.wait(60):
            raise RuntimeError("the answer collector did not start")

    def result(self, timeout_s: float) -> Answers:
        out: Answers = self._queue.get(timeout=timeout_s)
        self._proc.join(5)
        return out

    @property
    def pid(self) -> int | None:
        return self._proc.pid
