"""The fraud model's feature schema: one function turns an enriched event into a row.

Training and the live flow both call :func:`feature_row`, so the model always
sees features computed by the same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

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
    return int((event_ms // 3_600_000 + UTC_OFFSET_H.get(country, 0)) % 24)


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


def feature_row(txn: Transaction, window: tuple[float, ...], profile: CardProfile | None) -> list[float]:
    """Features of one event; ``window`` is (1m_count, 1m_sum, 1h_count, 1h_sum, distinct, secs_since_prev).

    A missing profile (unknown card, Redis unreachable, or a profile that failed
    validation) falls back to :data:`DEFAULT_PROFILE` and sets ``profile_missing``;
    the model is trained with profiles dropped, so it has learned what that means.
    Total for validated input: every value is finite.
    """
    count_1m, sum_1m, count_1h, sum_1h, distinct, gap = window
    if profile is not None:
        home = profile.home_country or txn.country
        avg, age, tier, missing = profile.avg_amount, profile.account_age_days, profile.risk_tier, 0.0
    else:
        home, missing = txn.country, 1.0
        avg, age, tier = (
            DEFAULT_PROFILE["avg_amount"],
            DEFAULT_PROFILE["account_age_days"],
            DEFAULT_PROFILE["risk_tier"],
        )
    return [
        math.log1p(txn.amount),
        math.log(txn.amount / max(avg, 0.01)),
        count_1m,
        math.log1p(max(sum_1m, 0.0)),
        count_1h,
        math.log1p(max(sum_1h, 0.0)),
        distinct,
        math.log1p(max(gap, 0.0)),
        float(txn.country != home),
        float(txn.country in HIGH_RISK_COUNTRIES),
        float(txn.merchant_category in RISKY_CATEGORIES),
        float(0 <= local_hour(txn.event_time_ms, home) < 5),
        math.log1p(age),
        tier,
        missing,
    ]


def feature_matrix(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32).reshape(-1, N_FEATURES)


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
