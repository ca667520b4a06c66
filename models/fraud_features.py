"""The fraud model's feature schema: one function turns a batch of enriched events into rows.

Training and the live flow both call :func:`feature_rows`, so the model always
sees features computed by the same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.transaction import Transaction
from state.tuple_pickle import tuple_pickled

# country -> UTC offset in hours (for card-local time of day)
UTC_OFFSET_H = {
    "US": -5,
    "GB": 0,
    "FR": 1,
    "DE": 1,
    "ES": 1,
    "IT": 1,
    "CA": -5,
    "BR": -3,
    "IN": 5,
    "JP": 9,
    "AU": 10,
    "MX": -6,
    "NG": 1,
    "RU": 3,
    "VN": 7,
    "ID": 7,
    "KP": 9,
    "UA": 2,
}
HIGH_RISK_COUNTRIES = frozenset({"NG", "RU", "VN", "ID", "KP", "UA"})
RISKY_CATEGORIES = frozenset({"gift_cards", "crypto", "wire_transfer", "jewelry", "electronics"})
DEFAULT_PROFILE = {"avg_amount": 50.0, "account_age_days": 365.0, "risk_tier": 1.0}

FEATURE_NAMES = (
    "log_amount",
    "log_amount_vs_usual",
    "count_1m",
    "log_sum_1m",
    "count_1h",
    "log_sum_1h",
    "distinct_merchants_1h",
    "log_secs_since_prev",
    "foreign",
    "high_risk_country",
    "risky_category",
    "night",
    "log_account_age",
    "risk_tier",
    "profile_missing",
)
N_FEATURES = len(FEATURE_NAMES)


def local_hour(event_ms: int, country: str) -> int:
    """Hour of day (0-23) at ``country``'s UTC offset."""
    return int(hour_at(event_ms, UTC_OFFSET_H.get(country, 0)))


def hour_at(event_ms: Any, offset_h: Any) -> Any:
    """Hour of day (0-23) of ``event_ms`` at UTC offset ``offset_h``: numbers, or numpy arrays of them (a batch).

    >>> hour_at(3_600_000, -5), hour_at(np.array([0, 3_600_000]), np.array([1, 9])).tolist()
    (20, [1, 10])
    """
    return (event_ms // 3_600_000 + offset_h) % 24


@tuple_pickled  # crosses processes at keyed steps
@dataclass(frozen=True, slots=True)
class CardProfile:
    """A card's profile from the online store, validated: every number finite and in range."""

    home_country: str | None
    avg_amount: float
    account_age_days: float
    risk_tier: float


PROFILE_RANGES = {"avg_amount": (0.01, 1_000_000.0), "account_age_days": (0.0, 100_000.0), "risk_tier": (0.0, 10.0)}


def parse_profile(raw: Mapping[str, str]) -> CardProfile:
    """Validate a profile hash; raises ``ValueError`` saying which field is unusable.

    Missing fields take :data:`DEFAULT_PROFILE`'s values; present ones must be finite
    numbers in range (text, empty, ``inf``, ``nan`` or negative values are refused).

    >>> parse_profile({"home_country": "FR", "avg_amount": "42.5"}).avg_amount
    42.5
    >>> parse_profile({"avg_amount": "nan"})
    Traceback (most recent call last):
    ...
    ValueError: profile field avg_amount='nan' is not a finite number
    """
    values: dict[str, float] = {}
    for name, (low, high) in PROFILE_RANGES.items():
        text = raw.get(name)
        if text is None:
            values[name] = DEFAULT_PROFILE[name]
            continue
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"profile field {name}={text[:40]!r} is not a number") from None
        if not math.isfinite(number):
            raise ValueError(f"profile field {name}={text[:40]!r} is not a finite number")
        if not low <= number <= high:
            raise ValueError(f"profile field {name}={number:g} is outside [{low:g}, {high:g}]")
        values[name] = number
    home = raw.get("home_country")
    if home is not None and not (len(home) == 2 and home.isalpha()):
        raise ValueError(f"profile field home_country={home[:40]!r} is not a 2-letter country code")
    return CardProfile(home, values["avg_amount"], values["account_age_days"], values["risk_tier"])


def feature_rows(
    txns: Sequence[Transaction], windows: Sequence[Sequence[float]], profiles: Sequence[CardProfile | None]
) -> np.ndarray:
    """The features of a batch of events, one ``float32`` row each; an event's ``window`` is (1m_count,
    1m_sum, 1h_count, 1h_sum, distinct, secs_since_prev).

    Training and the live flow both call this, so the model always sees features computed by the same
    code. It works column by column: one numpy operation per feature over the batch, where a function
    per event took ~20 interpreter steps for each (a stage-1 micro-batch holds ~1,000 events).

    A missing profile (unknown card, Redis unreachable, or a profile that failed validation) falls back
    to :data:`DEFAULT_PROFILE` and sets ``profile_missing``; the model is trained with profiles dropped,
    so it has learned what that means. Total for validated input: every value is finite.

    >>> from models.transaction import Transaction
    >>> t = Transaction("e", "c", 100.0, "USD", "m", "crypto", "NG", 3_600_000, 0.0)
    >>> row = feature_rows([t], [(2, 150.0, 3, 300.0, 2, 30.0)], [None])[0]
    >>> dict(zip(FEATURE_NAMES, row.astype(float).round(3).tolist(), strict=True))  # doctest: +NORMALIZE_WHITESPACE
    {'log_amount': 4.615, 'log_amount_vs_usual': 0.693, 'count_1m': 2.0, 'log_sum_1m': 5.017, 'count_1h': 3.0,
     'log_sum_1h': 5.707, 'distinct_merchants_1h': 2.0, 'log_secs_since_prev': 3.434, 'foreign': 0.0,
     'high_risk_country': 1.0, 'risky_category': 1.0, 'night': 1.0, 'log_account_age': 5.903, 'risk_tier': 1.0,
     'profile_missing': 1.0}
    """
    n = len(txns)
    homes = [t.country if p is None else (p.home_country or t.country) for t, p in zip(txns, profiles, strict=True)]
    defaults = (DEFAULT_PROFILE["avg_amount"], DEFAULT_PROFILE["account_age_days"], DEFAULT_PROFILE["risk_tier"], 1.0)
    profile = np.array(
        [defaults if p is None else (p.avg_amount, p.account_age_days, p.risk_tier, 0.0) for p in profiles],
        dtype=np.float64,
    ).reshape(n, 4)
    window = np.array(windows, dtype=np.float64).reshape(n, 6)
    amount = np.fromiter([t.amount for t in txns], np.float64, n)
    local = hour_at(
        np.fromiter([t.event_time_ms for t in txns], np.int64, n),
        np.fromiter([UTC_OFFSET_H.get(h, 0) for h in homes], np.int64, n),
    )
    out = np.empty((n, N_FEATURES), dtype=np.float64)
    out[:, 0] = np.log1p(amount)
    out[:, 1] = np.log(amount / np.maximum(profile[:, 0], 0.01))
    out[:, [2, 4, 6]] = window[:, [0, 2, 4]]
    out[:, [3, 5, 7]] = np.log1p(np.maximum(window[:, [1, 3, 5]], 0.0))
    out[:, 8] = [t.country != h for t, h in zip(txns, homes, strict=True)]
    out[:, 9] = [t.country in HIGH_RISK_COUNTRIES for t in txns]
    out[:, 10] = [t.merchant_category in RISKY_CATEGORIES for t in txns]
    out[:, 11] = local < 5
    out[:, 12] = np.log1p(profile[:, 1])
    out[:, 13:15] = profile[:, 2:4]
    return out.astype(np.float32)


def feature_row(txn: Transaction, window: Sequence[float], profile: CardProfile | None) -> np.ndarray:
    """One event's row of :func:`feature_rows` (for a single event; batches go through that function)."""
    return feature_rows([txn], [window], [profile])[0]


FEATURE_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}


# The stage-2 sequence model's view of a card's recent events (oldest first, the current event last).
SEQUENCE_LENGTH = 32
SEQUENCE_FEATURES = ("log_amount", "log_amount_vs_usual", "log_gap", "risky_category", "high_risk_country", "foreign")
RecentEvent = tuple[float, float, str, str]  # event time (s), amount, merchant category, country


def sequence_rows(recent: list[RecentEvent], profile: CardProfile | None) -> np.ndarray:
    """A card's last :data:`SEQUENCE_LENGTH` events as a ``(SEQUENCE_LENGTH, len(SEQUENCE_FEATURES))`` array,
    left-padded with zeros (a padded step is all zeros; a real one has ``log_amount > 0``).

    >>> m = sequence_rows([(0.0, 10.0, "grocery", "US"), (60.0, 500.0, "crypto", "NG")], None)
    >>> m.shape, m[-1, 3:].tolist(), float(m[0].sum())
    ((32, 6), [1.0, 1.0, 0.0], 0.0)
    """
    out = np.zeros((SEQUENCE_LENGTH, len(SEQUENCE_FEATURES)), dtype=np.float32)
    events = recent[-SEQUENCE_LENGTH:]
    avg = profile.avg_amount if profile is not None else DEFAULT_PROFILE["avg_amount"]
    offset = SEQUENCE_LENGTH - len(events)
    previous = None
    for i, (t, amount, category, country) in enumerate(events):
        home = (profile.home_country if profile is not None else None) or country
        gap = 3600.0 if previous is None else min(max(t - previous, 0.0), 3600.0)
        out[offset + i] = (
            math.log1p(amount),
            math.log(amount / max(avg, 0.01)),
            math.log1p(gap),
            float(category in RISKY_CATEGORIES),
            float(country in HIGH_RISK_COUNTRIES),
            float(country != home),
        )
        previous = t
    return out
