"""The fraud model's feature schema: one function turns an enriched event into a row.

Training and the live flow both call :func:`feature_row`, so the model always
sees features computed by the same code.
"""

from __future__ import annotations

import math

import numpy as np

from models.transaction import Transaction

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


def feature_row(txn: Transaction, window: tuple[float, ...], profile: dict[str, str] | None) -> list[float]:
    """Features of one event; ``window`` is (1m_count, 1m_sum, 1h_count, 1h_sum, distinct, secs_since_prev).

    A missing profile (unknown card, or Redis unreachable) falls back to
    :data:`DEFAULT_PROFILE` and sets ``profile_missing``.
    """
    count_1m, sum_1m, count_1h, sum_1h, distinct, gap = window
    if profile:
        home = profile.get("home_country", txn.country)
        avg = float(profile.get("avg_amount", DEFAULT_PROFILE["avg_amount"]))
        age = float(profile.get("account_age_days", DEFAULT_PROFILE["account_age_days"]))
        tier = float(profile.get("risk_tier", DEFAULT_PROFILE["risk_tier"]))
        missing = 0.0
    else:
        home, avg, age, tier, missing = txn.country, *DEFAULT_PROFILE.values(), 1.0
    return [
        math.log1p(txn.amount),
        math.log(txn.amount / max(avg, 0.01)),
        count_1m,
        math.log1p(sum_1m),
        count_1h,
        math.log1p(sum_1h),
        distinct,
        math.log1p(gap),
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
