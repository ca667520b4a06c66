"""Send the synthetic transaction stream to Kafka, open-loop: ``sluice produce transactions``.

Events go to the transactions topic keyed by card (one card's events stay in
order on one partition); fraud labels go to the labels topic as chargebacks,
late (``--label-delay-s`` on the events' clock); the flow never reads them, a
retraining run does (``sluice train fraud --from-log``). The stream itself (cards, patterns, labels) is
:class:`models.synthetic_transactions.TransactionStream`.
"""

from __future__ import annotations

import argparse
import heapq
import random
import time
from collections.abc import Iterator

import orjson

from models.synthetic_transactions import START_MS, Shift, TransactionStream
from models.transaction import Transaction
from operators.kafka.admin import check_broker, require_topics
from operators.kafka.records import KafkaRecord
from operators.kafka.sink import CheckedProducer
from sluice.harness.loadgen import send_open_loop
from sluice.settings import FraudSettings, SettingsError


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


def prepare(txn: Transaction, settings: FraudSettings, extra: list[KafkaRecord] | None = None) -> PreparedEvent:
    """The event ready to send, with ``extra`` records (labels) sent alongside it."""
    key = txn.card_id.encode()
    head = txn.to_json(sent_at_ms=0.0)
    head = head[: head.rindex(b'"sent_at":') + len(b'"sent_at":')]
    return PreparedEvent(settings.transactions_topic, key, head, extra or [])


def chargeback(txn: Transaction, pattern: str, reported_at_ms: int, settings: FraudSettings) -> KafkaRecord:
    """The label of a fraudulent event, as a chargeback reported at ``reported_at_ms`` (event clock)."""
    body = {"event_id": txn.event_id, "fraud": True, "pattern": pattern, "reported_at": reported_at_ms}
    return KafkaRecord(settings.labels_topic, txn.event_id.encode(), orjson.dumps(body))


def event_records(
    stream: TransactionStream, settings: FraudSettings, malformed_rate: float = 0.0, label_delay_s: float = 0.0
) -> Iterator[PreparedEvent]:
    """Record builders for the stream: each event, and the labels that are due by its time.

    A fraudulent event's label is a chargeback reported ``label_delay_s`` after it
    (on the events' clock): it is sent with the first event at or after that time,
    so labels arrive late, as they do from card issuers (0: with the event itself).
    A ``malformed_rate`` share of events is replaced by a broken payload (for DLQ
    demos); those carry no label and expect no decision.

    >>> s = FraudSettings()
    >>> first = next(event_records(TransactionStream(7, n_cards=10), s))
    >>> orjson.loads(first(1234.5)[0].value)["sent_at"]
    1234.5
    """
    rng = random.Random(f"malformed-{stream.seed}")
    delay_ms = int(label_delay_s * 1000)
    due: list[tuple[int, str, KafkaRecord]] = []  # heap of (reported at, event id, label)
    for txn, pattern in stream:
        if malformed_rate and rng.random() < malformed_rate:
            bad = b'{"event_id": "' + txn.event_id.encode() + b'", "amount": "lots"'
            yield PreparedEvent(settings.transactions_topic, b"malformed", bad, [])
            continue
        if pattern is not None:
            reported = txn.event_time_ms + delay_ms
            heapq.heappush(due, (reported, txn.event_id, chargeback(txn, pattern, reported, settings)))
        labels = []
        while due and due[0][0] <= txn.event_time_ms:
            labels.append(heapq.heappop(due)[2])
        yield prepare(txn, settings, labels)


def sender(settings: FraudSettings) -> CheckedProducer:
    """The producer the load generator sends with (the connection's profile, idempotent)."""
    return CheckedProducer(settings.connection().producer_config())


def start_of(text: str) -> int:
    """The event clock's start for ``--start-time``: ``now``, epoch milliseconds, or empty for the default.

    >>> start_of("") == START_MS, start_of("1767225600000"), start_of("now") > START_MS
    (True, 1767225600000, True)
    """
    if not text:
        return START_MS
    if text == "now":
        return int(time.time() * 1000)
    if not text.isdigit():
        raise SettingsError(f"--start-time {text!r}: use 'now' or epoch milliseconds")
    return int(text)


def run(args: argparse.Namespace) -> int:
    settings = FraudSettings.from_env()
    check_broker(settings.connection(), settings.connect_timeout_s)
    require_topics(settings.connection(), [settings.transactions_topic, settings.labels_topic])  # a typo: no new topic
    shifted = args.shift_amounts != 1.0 or args.shift_foreign > 0
    shift = Shift(args.shift_amounts, args.shift_foreign) if shifted else None
    stream = TransactionStream(args.seed, n_cards=args.cards, shift=shift, start_ms=start_of(args.start_time))
    report = send_open_loop(
        sender(settings),
        event_records(stream, settings, args.malformed_rate, args.label_delay_s),
        args.rate,
        args.count,
        progress=None,
    )
    print(
        f"sent {report.sent} events in {report.seconds:.1f}s ({report.rate:.0f}/s); "
        f"schedule lag p50 {report.lag_p50_ms:.2f} ms p99 {report.lag_p99_ms:.2f} ms max {report.lag_max_ms:.1f} ms"
    )
    return 0
