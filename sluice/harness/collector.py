"""Read decisions off Kafka and measure them: counts, end-to-end latency, per-event results."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, Message, TopicPartition
from hdrh.histogram import HdrHistogram

from operators.kafka.admin import list_partitions, log, read_all
from operators.kafka.connection import KafkaConnection

__all__ = ["BackgroundCollector", "Collected", "collect", "latency_histogram", "latency_summary", "read_all"]


@dataclass
class Collected:
    """What a collector saw."""

    received: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    by_event: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_over_time: list[tuple[float, float]] = field(default_factory=list)
    first_receive: float = 0.0
    last_receive: float = 0.0
    cpu_s: float = 0.0


def poll_batch(consumer: Consumer, timeout_s: float, max_messages: int = 2000) -> list[Message]:
    """Wait up to ``timeout_s`` for one message, then take whatever else is already here.

    ``Consumer.consume(n, timeout)`` waits until ``n`` messages *or* the timeout, which
    adds up to the whole timeout to every message's latency at low rates.
    """
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    return [first, *consumer.consume(max_messages - 1, 0)]


def collect(
    connection: KafkaConnection,
    topic: str,
    expected: int,
    timeout_s: float,
    warmup_s: float = 0.0,
    start_offsets: dict[int, int] | None = None,
    isolation: str = "read_committed",
    idle_stop_s: float = 10.0,
    on_ready: Callable[[], None] | None = None,
) -> Collected:
    """Consume decisions until ``expected`` distinct events are seen, ``timeout_s`` passes,
    or nothing new arrived for ``idle_stop_s`` after the first decision.

    Latency is receive time minus the event's ``sent_at``; events sent in the
    first ``warmup_s`` after the collector is ready (``on_ready`` is called then)
    are counted but not timed.
    """
    cpu0 = time.process_time()
    consumer = Consumer(
        connection.consumer_config(
            **{
                "group.id": "sluice-collector",
                "enable.auto.commit": False,
                "isolation.level": isolation,
                "logger": log,
            }
        )
    )
    parts = list_partitions(connection, topic)
    offsets = start_offsets or {}
    consumer.assign([TopicPartition(topic, p, offsets.get(p, 0)) for p in parts])
    hist = latency_histogram()
    result = Collected()
    poll_batch(consumer, 0.5)  # join the partitions before declaring readiness
    consumer.assign([TopicPartition(topic, p, offsets.get(p, 0)) for p in parts])
    warmup_until_ms = time.time() * 1000.0 + warmup_s * 1000.0
    if on_ready is not None:
        on_ready()
    deadline = time.monotonic() + timeout_s
    sample_every = max(1, expected // 4000)
    while len(result.by_event) < expected and time.monotonic() < deadline:
        msgs = poll_batch(consumer, 0.1)
        now_ms = time.time() * 1000.0
        if not msgs and result.last_receive and now_ms - result.last_receive > idle_stop_s * 1000:
            break
        for msg in msgs:
            if msg.error() is not None:
                continue
            d = orjson.loads(msg.value() or b"{}")
            if d["event_id"].startswith("probe-"):
                continue
            result.received += 1
            if d["event_id"] in result.by_event:
                result.duplicates += 1
                continue
            result.by_event[d["event_id"]] = d["decision"]
            result.decisions[d["decision"]] += 1
            if d["sent_at"] >= warmup_until_ms:
                lat = now_ms - d["sent_at"]
                hist.record_value(max(1, int(lat * 1000)))
                if result.received % sample_every == 0:
                    result.latency_over_time.append((now_ms, lat))
        if msgs:
            result.first_receive = result.first_receive or now_ms
            result.last_receive = now_ms
    consumer.close()
    result.cpu_s = time.process_time() - cpu0
    result.latency_ms = latency_summary(hist)
    return result


def latency_histogram() -> HdrHistogram:
    """Microsecond resolution, 1 us to 1 h, 3 significant digits."""
    return HdrHistogram(1, 3_600_000_000, 3)


def latency_summary(hist: HdrHistogram) -> dict[str, float]:
    """P50/P90/P99/P99.9/max in milliseconds (and the count) of a :func:`latency_histogram`.

    >>> h = latency_histogram()
    >>> recorded = [h.record_value(ms * 1000) for ms in range(1, 1001)]
    >>> s = latency_summary(h)
    >>> (round(s["p50"]), round(s["p99"]), round(s["max"]), s["timed"])
    (500, 990, 1000, 1000)
    """
    if not hist.get_total_count():
        return {}
    summary = {f"p{p:g}": hist.get_value_at_percentile(p) / 1000 for p in (50, 90, 99, 99.9)}
    return summary | {"max": hist.get_max_value() / 1000, "timed": hist.get_total_count()}


def _run(queue: mp.Queue[Any], kwargs: dict[str, Any]) -> None:
    queue.put(collect(**kwargs, on_ready=lambda: queue.put("ready")))


class BackgroundCollector:
    """:func:`collect` in a child process, so it does not share the sender's GIL.

    The constructor returns once the collector is consuming.
    """

    def __init__(self, ready_timeout_s: float = 60.0, **kwargs: object) -> None:
        ctx = mp.get_context("spawn")
        self._queue: mp.Queue[Any] = ctx.Queue()
        self._proc = ctx.Process(target=_run, args=(self._queue, kwargs), daemon=True)
        self._proc.start()
        if self._queue.get(timeout=ready_timeout_s) != "ready":
            raise RuntimeError("collector failed to start")

    def result(self, timeout_s: float) -> Collected:
        out: Collected = self._queue.get(timeout=timeout_s)
        self._proc.join(5)
        return out

    @property
    def pid(self) -> int | None:
        return self._proc.pid
