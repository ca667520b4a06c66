"""Send the synthetic transaction stream to Kafka, open-loop: ``sluice produce transactions``.

Events go to the transactions topic keyed by card (one card's events stay in
order on one partition); fraud labels go to the labels topic, which the flow
never reads. The stream itself (cards, patterns, labels) is
:class:`models.synthetic_transactions.TransactionStream`.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator

import orjson
from confluent_kafka import Producer

from models.synthetic_transactions import Shift, TransactionStream
from models.transaction import Transaction
from operators.kafka.records import KafkaRecord
from sluice.harness.loadgen import send_open_loop
from sluice.settings import FraudSettings


class PreparedEvent:
    """One event's records, encoded ahead of time except for the send time.

    The JSON is built once, up to ``"sent_at":``; sending only appends the time, so
    a sender can keep an exact schedule at high rates.
    """

    __slots__ = ("topic", "key", "head", "extra")

    def __init__(self, topic: str, key: bytes, head: bytes, extra: list[KafkaRecord]) -> None:
        self.topic, self.key, self.head, self.extra = topic, key, head, extra

    def __call__(self, sent_ms: float) -> list[KafkaRecord]:
        value = self.head + b"%.3f}" % sent_ms if self.head.endswith(b":") else self.head
        return [KafkaRecord(self.topic, self.key, value), *self.extra]


def prepare(txn: Transaction, pattern: str | None, settings: FraudSettings) -> PreparedEvent:
    """The event (and, for fraud, its label record) ready to send."""
    key = txn.card_id.encode()
    head = txn.to_json(sent_at_ms=0.0)
    head = head[: head.rindex(b'"sent_at":') + len(b'"sent_at":')]
    extra = []
    if pattern is not None:
        label = orjson.dumps({"event_id": txn.event_id, "fraud": True, "pattern": pattern})
        extra.append(KafkaRecord(settings.labels_topic, key, label))
    return PreparedEvent(settings.transactions_topic, key, head, extra)


def event_records(
    stream: TransactionStream, settings: FraudSettings, malformed_rate: float = 0.0
) -> Iterator[PreparedEvent]:
    """Record builders for the stream: the event, plus its label when it is fraud.

    A ``malformed_rate`` share of events is replaced by a broken payload (for DLQ demos);
    those carry no label and expect no decision.

    >>> s = FraudSettings()
    >>> first = next(event_records(TransactionStream(7, n_cards=10), s))
    >>> orjson.loads(first(1234.5)[0].value)["sent_at"]
    1234.5
    """
    rng = random.Random(f"malformed-{stream.seed}")
    for txn, pattern in stream:
        if malformed_rate and rng.random() < malformed_rate:
            bad = b'{"event_id": "' + txn.event_id.encode() + b'", "amount": "lots"'
            yield PreparedEvent(settings.transactions_topic, b"malformed", bad, [])
        else:
            yield prepare(txn, pattern, settings)


def sender(settings: FraudSettings) -> Producer:
    """The producer the load generator sends with (the connection's profile, idempotent)."""
    return Producer(settings.connection().producer_config())


def run(args: argparse.Namespace) -> int:
    settings = FraudSettings.from_env()
    shifted = args.shift_amounts != 1.0 or args.shift_foreign > 0
    shift = Shift(args.shift_amounts, args.shift_foreign) if shifted else None
    stream = TransactionStream(args.seed, n_cards=args.cards, shift=shift)
    report = send_open_loop(
        sender(settings), event_records(stream, settings, args.malformed_rate), args.rate, args.count, progress=None
    )
    print(
        f"sent {report.sent} events in {report.seconds:.1f}s ({report.rate:.0f}/s); "
        f"schedule lag p50 {report.lag_p50_ms:.2f} ms p99 {report.lag_p99_ms:.2f} ms max {report.lag_max_ms:.1f} ms"
    )
    return 0
