"""Seeded synthetic card transactions with realistic fraud patterns, sent open-loop.

The stream mixes ordinary spending with four fraud patterns: velocity bursts on
one card, purchases far from the card's home country, amounts far above the
card's usual, and risky merchant categories at night (card-local time). The same
seed always yields the same cards, events and labels, whatever the send rate.

``python -m sluice.generator --rate 5000 --count 100000 --seed 7`` sends the
events to the transactions topic (keyed by card, so one card's events stay in
order on one partition) and the fraud labels to the labels topic, which the
flow never reads.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson
from confluent_kafka import Producer

from models.fraud_features import HIGH_RISK_COUNTRIES, RISKY_CATEGORIES, local_hour
from models.transaction import Transaction
from operators.kafka_records import KafkaRecord
from sluice.loadgen import send_open_loop
from sluice.settings import Settings

# home country -> share of cards
HOME_COUNTRIES = {
    "US": 30,
    "GB": 12,
    "FR": 10,
    "DE": 10,
    "ES": 6,
    "IT": 6,
    "CA": 6,
    "BR": 6,
    "IN": 5,
    "JP": 4,
    "AU": 3,
    "MX": 2,
}
HIGH_RISK = tuple(sorted(HIGH_RISK_COUNTRIES))
CURRENCY = {"US": "USD", "GB": "GBP", "CA": "CAD", "BR": "BRL", "IN": "INR", "JP": "JPY", "AU": "AUD", "MX": "MXN"}
NORMAL_CATEGORIES = ("grocery", "restaurant", "fuel", "retail", "travel", "online", "pharmacy", "entertainment")
RISKY = tuple(sorted(RISKY_CATEGORIES))
PATTERNS = ("velocity", "foreign", "amount_spike", "night_risky")
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass(frozen=True, slots=True)
class Card:
    card_id: str
    home: str
    avg_amount: float
    account_age_days: int
    risk_tier: int

    def profile(self) -> dict[str, object]:
        return {
            "home_country": self.home,
            "avg_amount": round(self.avg_amount, 2),
            "account_age_days": self.account_age_days,
            "risk_tier": self.risk_tier,
        }


def make_cards(n_cards: int, seed: int) -> list[Card]:
    """The card population for ``seed`` (independent of the event stream's length)."""
    rng = random.Random(f"cards-{seed}")
    homes, weights = list(HOME_COUNTRIES), list(HOME_COUNTRIES.values())
    cards = []
    for i in range(n_cards):
        cards.append(
            Card(
                card_id=f"c{i:07d}",
                home=rng.choices(homes, weights)[0],
                avg_amount=math.exp(rng.gauss(3.4, 0.6)),
                account_age_days=int(rng.uniform(7, 3650)),
                risk_tier=rng.choices((0, 1, 2), (80, 15, 5))[0],
            )
        )
    return cards


class TransactionStream:
    """Deterministic iterator of ``(Transaction, fraud pattern or None)`` in send order.

    ``mean_gap_ms`` is the average event-time spacing between events (event time
    is simulated, so windows see realistic per-card rates at any send rate).
    """

    def __init__(
        self,
        seed: int,
        n_cards: int = 20_000,
        fraud_rate: float = 0.004,
        mean_gap_ms: float = 50.0,
        disorder_rate: float = 0.01,
    ) -> None:
        self.seed = seed
        self.cards = make_cards(n_cards, seed)
        self.fraud_rate = fraud_rate
        self.mean_gap_ms = mean_gap_ms
        self.disorder_rate = disorder_rate
        rng = random.Random(f"merchants-{seed}")
        self.merchants = [(f"m{i:05d}", rng.choice(NORMAL_CATEGORIES)) for i in range(3000)]
        self.risky_merchants = [(f"r{i:04d}", rng.choice(RISKY)) for i in range(200)]

    def __iter__(self) -> Iterator[tuple[Transaction, str | None]]:
        """Yield ``(transaction, fraud pattern or None)`` forever."""
        rng = random.Random(f"events-{self.seed}")
        clock = float(START_MS)
        pending: list[tuple[float, int, Card, str]] = []  # scheduled events of running fraud patterns
        seq = 0
        while True:
            clock += rng.expovariate(1.0 / self.mean_gap_ms)
            while pending and pending[0][0] <= clock:
                at, _, card, pattern = heapq.heappop(pending)
                yield self._fraud_event(rng, seq, card, pattern, int(at)), pattern
                seq += 1
            card = rng.choice(self.cards)
            if rng.random() >= self.fraud_rate:
                yield self._normal_event(rng, seq, card, int(clock)), None
                seq += 1
                continue
            pattern = rng.choice(PATTERNS)
            if pattern == "night_risky" and not 0 <= local_hour(int(clock), card.home) < 5:
                pattern = "amount_spike"
            burst = rng.randint(6, 10) if pattern == "velocity" else rng.randint(1, 3)
            at = clock
            for k in range(burst - 1):
                at += rng.uniform(2_000, 8_000) if pattern == "velocity" else rng.uniform(20_000, 600_000)
                heapq.heappush(pending, (at, seq * 16 + k, card, pattern))
            yield self._fraud_event(rng, seq, card, pattern, int(clock)), pattern
            seq += 1

    def _event_id(self, seq: int) -> str:
        return f"{self.seed}-{seq}"

    def _jitter(self, rng: random.Random, event_ms: int) -> int:
        if rng.random() < self.disorder_rate:
            return event_ms - int(rng.uniform(0, 20_000))
        return event_ms

    def _normal_event(self, rng: random.Random, seq: int, card: Card, event_ms: int) -> Transaction:
        country = card.home if rng.random() < 0.97 else rng.choice(list(HOME_COUNTRIES))
        merchant, category = rng.choice(self.merchants)
        if rng.random() < 0.01:
            merchant, category = rng.choice(self.risky_merchants)
        amount = max(0.5, rng.lognormvariate(math.log(card.avg_amount), 0.5))
        return self._txn(seq, card, amount, merchant, category, country, self._jitter(rng, event_ms))

    def _fraud_event(self, rng: random.Random, seq: int, card: Card, pattern: str, event_ms: int) -> Transaction:
        merchant, category = rng.choice(self.merchants)
        country, amount = card.home, card.avg_amount * rng.uniform(0.5, 2.0)
        if pattern == "foreign":
            country = rng.choice(HIGH_RISK)
            amount = card.avg_amount * rng.uniform(2.0, 6.0)
        elif pattern == "amount_spike":
            amount = card.avg_amount * rng.uniform(8.0, 25.0)
            if rng.random() < 0.5:
                merchant, category = rng.choice(self.risky_merchants)
        elif pattern == "night_risky":
            merchant, category = rng.choice(self.risky_merchants)
            amount = card.avg_amount * rng.uniform(1.5, 5.0)
        return self._txn(seq, card, amount, merchant, category, country, event_ms)

    def _txn(
        self, seq: int, card: Card, amount: float, merchant: str, category: str, country: str, event_ms: int
    ) -> Transaction:
        return Transaction(
            event_id=self._event_id(seq),
            card_id=card.card_id,
            amount=round(amount, 2),
            currency=CURRENCY.get(card.home, "EUR"),
            merchant_id=merchant,
            merchant_category=category,
            country=country,
            event_time_ms=event_ms,
            sent_at_ms=0.0,
        )


def encode(txn: Transaction, sent_ms: float) -> bytes:
    """The event's JSON with the producer's send time."""
    return orjson.dumps(
        {
            "event_id": txn.event_id,
            "card_id": txn.card_id,
            "amount": txn.amount,
            "currency": txn.currency,
            "merchant_id": txn.merchant_id,
            "merchant_category": txn.merchant_category,
            "country": txn.country,
            "event_time": txn.event_time_ms,
            "sent_at": sent_ms,
        }
    )


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


def prepare(txn: Transaction, pattern: str | None, settings: Settings) -> PreparedEvent:
    """The event (and, for fraud, its label record) ready to send."""
    key = txn.card_id.encode()
    head = encode(txn, 0.0)
    head = head[: head.rindex(b'"sent_at":') + len(b'"sent_at":')]
    extra = []
    if pattern is not None:
        label = orjson.dumps({"event_id": txn.event_id, "fraud": True, "pattern": pattern})
        extra.append(KafkaRecord(settings.labels_topic, key, label))
    return PreparedEvent(settings.transactions_topic, key, head, extra)


def event_records(
    stream: TransactionStream, settings: Settings, malformed_rate: float = 0.0
) -> Iterator[Callable[[float], list[KafkaRecord]]]:
    """Record builders for the stream: the event, plus its label when it is fraud.

    A ``malformed_rate`` share of events is replaced by a broken payload (for DLQ demos);
    those carry no label and expect no decision.

    >>> s = Settings()
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send synthetic card transactions to Kafka, open-loop.")
    parser.add_argument("--rate", type=float, default=5000.0, help="events per second")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cards", type=int, default=20_000)
    parser.add_argument("--malformed-rate", type=float, default=0.0)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    producer = Producer(settings.kafka_config(**{"linger.ms": 2, "enable.idempotence": True}))
    stream = TransactionStream(args.seed, n_cards=args.cards)
    report = send_open_loop(producer, event_records(stream, settings, args.malformed_rate), args.rate, args.count)
    print(
        f"sent {report.sent} events in {report.seconds:.1f}s ({report.rate:.0f}/s); "
        f"schedule lag p50 {report.lag_p50_ms:.2f} ms p99 {report.lag_p99_ms:.2f} ms max {report.lag_max_ms:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
