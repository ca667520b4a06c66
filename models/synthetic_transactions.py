"""Seeded synthetic card transactions with realistic fraud patterns (training data and load).

The stream mixes ordinary spending with five fraud patterns: velocity bursts on
one card, purchases far from the card's home country, amounts far above the
card's usual, risky merchant categories at night (card-local time), and card
testing: a few tiny online charges, then a purchase a few times the card's usual.
The last one's evidence is in the *order* of events (the purchase alone looks
like a generous but ordinary one), which is what the sequence model is for. The same
seed always yields the same cards, events and labels, whatever the send rate.
Training (:mod:`models.train_fraud`) and the load generator (``sluice produce
transactions``) iterate the same stream.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from models.fraud_features import HIGH_RISK_COUNTRIES, RISKY_CATEGORIES, local_hour
from models.transaction import Transaction

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
PATTERNS = ("velocity", "foreign", "amount_spike", "night_risky", "card_testing")
TESTED_PURCHASE = "card_testing_purchase"  # the purchase that follows a card's test charges
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class Shift:
    """A change in the population the stream draws from (drift tests): every amount times ``amount_scale``,
    and a ``foreign_share`` of events moved to another country than the card's home.

    The shifted stream keeps the same events, cards and labels; the shift has its own random numbers, so
    the unshifted stream of a seed is the same with or without this feature.
    """

    amount_scale: float = 1.0
    foreign_share: float = 0.0


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
    ``start_ms`` is where the event clock starts: the default gives the same stream
    every time; another start (say, now) gives events later than an earlier run's,
    with event ids of their own, so a flow that has seen that run takes them as new.

    >>> later = TransactionStream(7, n_cards=10, start_ms=START_MS + 86_400_000)
    >>> (first, _), (again, _) = next(iter(TransactionStream(7, n_cards=10))), next(iter(later))
    >>> again.event_time_ms - first.event_time_ms, first.event_id == again.event_id
    (86400000, False)
    """

    def __init__(
        self,
        seed: int,
        n_cards: int = 20_000,
        fraud_rate: float = 0.004,
        mean_gap_ms: float = 50.0,
        disorder_rate: float = 0.01,
        shift: Shift | None = None,
        start_ms: int = START_MS,
    ) -> None:
        self.seed = seed
        self.start_ms = start_ms
        # event ids: "<seed>-<n>" for the default stream (as ever), "<seed>-<start>-<n>" for any other start
        self._id_prefix = f"{seed}-" if start_ms == START_MS else f"{seed}-{start_ms}-"
        self.shift = shift
        self._shift_rng = random.Random(f"shift-{seed}")
        self.cards = make_cards(n_cards, seed)
        self.fraud_rate = fraud_rate
        self.mean_gap_ms = mean_gap_ms
        self.disorder_rate = disorder_rate
        rng = random.Random(f"merchants-{seed}")
        self.merchants = [(f"m{i:05d}", rng.choice(NORMAL_CATEGORIES)) for i in range(3000)]
        self.risky_merchants = [(f"r{i:04d}", rng.choice(RISKY)) for i in range(200)]
        self.online_merchants = [m for m in self.merchants if m[1] == "online"]

    def __iter__(self) -> Iterator[tuple[Transaction, str | None]]:
        """Yield ``(transaction, fraud pattern or None)`` forever."""
        rng = random.Random(f"events-{self.seed}")
        self._shift_rng = random.Random(f"shift-{self.seed}")
        clock = float(self.start_ms)
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
            at = clock
            for k, (gap, later) in enumerate(self._pattern_plan(rng, pattern)):
                at += gap
                heapq.heappush(pending, (at, seq * 16 + k, card, later))
            yield self._fraud_event(rng, seq, card, pattern, int(clock)), pattern
            seq += 1

    @staticmethod
    def _pattern_plan(rng: random.Random, pattern: str) -> list[tuple[float, str]]:
        """The events that follow a pattern's first one: (gap before it in ms, its pattern)."""
        if pattern == "velocity":
            return [(rng.uniform(2_000, 8_000), pattern) for _ in range(rng.randint(5, 9))]
        if pattern == "card_testing":
            tests = [(rng.uniform(20_000, 120_000), pattern) for _ in range(rng.randint(1, 3))]
            return [*tests, (rng.uniform(30_000, 300_000), TESTED_PURCHASE)]
        return [(rng.uniform(20_000, 600_000), pattern) for _ in range(rng.randint(0, 2))]

    def _event_id(self, seq: int) -> str:
        return f"{self._id_prefix}{seq}"

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
        elif pattern == "card_testing":
            merchant, category = rng.choice(self.online_merchants)
            amount = rng.uniform(0.5, 2.0)
        elif pattern == TESTED_PURCHASE:
            amount = card.avg_amount * rng.uniform(2.0, 4.0)
        return self._txn(seq, card, amount, merchant, category, country, event_ms)

    def _txn(
        self, seq: int, card: Card, amount: float, merchant: str, category: str, country: str, event_ms: int
    ) -> Transaction:
        if self.shift is not None:
            amount *= self.shift.amount_scale
            if self._shift_rng.random() < self.shift.foreign_share:
                country = self._shift_rng.choice([c for c in (*HOME_COUNTRIES, *HIGH_RISK) if c != card.home])
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
