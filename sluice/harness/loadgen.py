"""Open-loop load: send on a fixed schedule, not as fast as possible.

Event ``i`` is due at ``start + i / rate``. A flow that falls behind shows up as
latency (its queue grows) instead of as a politely slower sender. The sender
records its own lateness against the schedule, so a saturated generator is not
mistaken for a slow flow.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from confluent_kafka import Producer
from hdrh.histogram import HdrHistogram

from operators.kafka.records import KafkaRecord
from operators.kafka.sink import CheckedProducer, DeliveryFailed, produce_all
from sluice.harness.progress import Progress


@dataclass
class SendReport:
    """What the sender did: counts, its real rate and its lag behind the schedule."""

    sent: int
    seconds: float
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


class NotDelivered(RuntimeError):
    """Records still queued when the sender gave up: nothing acknowledged them."""


def send_open_loop(
    producer: Producer,
    make_records: Iterator[Callable[[float], list[KafkaRecord]]],
    rate: float,
    count: int,
    chunk: int = 64,
    progress: bool | None = False,
) -> SendReport:
    """Send ``count`` events at ``rate``/s, open loop; each item of ``make_records`` builds the
    records of one event given its scheduled send time (epoch ms): event ``i`` is due ``i / rate`` s
    after the start and never goes out before that.

    ``progress``: show rate, done/total and ETA on a terminal (None: when stderr is one).
    """
    lag = HdrHistogram(1, 60_000_000, 3)  # microseconds
    shown = Progress(count, "sent", enabled=progress)
    start = time.perf_counter()
    wall0 = time.time() - start
    sent = 0
    while sent < count:
        now = time.perf_counter()
        due = min(count, int((now - start) * rate) + 1)
        if sent >= due:
            time.sleep(min(0.001, max(0.0, start + sent / rate - now)))
            continue
        due = min(due, sent + chunk)
        batch: list[KafkaRecord] = []
        for i in range(sent, due):
            lag.record_value(max(1, int((now - start - i / rate) * 1e6)))
            # Stamped with when it was due, not when it went out: a sender that fell behind (a stall, a full
            # producer queue) would otherwise hide that wait from every latency measured from the stamp.
            batch.extend(next(make_records)((wall0 + start + i / rate) * 1000.0))
        produce_all(producer, batch)
        sent = due
        shown.update(sent)
    shown.close()
    if isinstance(producer, CheckedProducer):
        try:
            producer.flush_or_raise(60)
        except DeliveryFailed as exc:
            raise NotDelivered(str(exc)) from None
    elif left := producer.flush(60):
        raise NotDelivered(
            f"{left} of the records sent were not delivered within 60 s: is a broker listening at SLUICE_BROKERS?"
        )
    return SendReport(
        sent=sent,
        seconds=time.perf_counter() - start,
        lag_p50_ms=lag.get_value_at_percentile(50) / 1000,
        lag_p99_ms=lag.get_value_at_percentile(99) / 1000,
        lag_max_ms=lag.get_max_value() / 1000,
    )
