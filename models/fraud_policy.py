"""The fraud decision policy: rules that flag a transaction, and thresholds that turn a score into a decision.

Training uses the same rules to know which events the flow escalates to the
sequence model (any fired rule does), so the stage-2 model is trained on the
events it will see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.fraud_features import FEATURE_INDEX, CardProfile, feature_rows
from models.transaction import Transaction

Features = tuple[float, ...]
RULES = ("velocity_burst", "amount_far_above_usual", "high_risk_country", "risky_category_at_night")


@dataclass(frozen=True)
class Policy:
    """Score thresholds and the rules that can raise a decision to review.

    >>> Policy().decide(0.95, []), Policy().decide(0.3, ["velocity_burst"]), Policy().decide(0.3, [])
    ('decline', 'review', 'approve')
    """

    decline_at: float = 0.9
    review_at: float = 0.5
    review_with_rule_at: float = 0.2
    velocity_1m: int = 5
    amount_multiple: float = 8.0

    def rules(self, txn: Transaction, feats: Features, profile: CardProfile | None) -> list[str]:
        """Names of the rules one event breaks (a batch goes through :meth:`rules_of`)."""
        return self.rules_of(feature_rows([txn], [feats], [profile]), [txn], [profile])[0]

    def rules_of(
        self, rows: np.ndarray, txns: Sequence[Transaction], profiles: Sequence[CardProfile | None]
    ) -> list[list[str]]:
        """Names of the rules each event of a batch breaks, read off its :func:`feature_rows` (so a rule and
        the feature it tests cannot disagree); only the amount is compared unrounded.

        >>> from models.transaction import Transaction
        >>> t = Transaction("e", "c", 900.0, "USD", "m", "jewelry", "NG", 1_700_000_000_000, 0.0)
        >>> home = CardProfile("GB", 50.0, 100.0, 1.0)
        >>> Policy().rules_of(feature_rows([t, t], [(7, 0, 0, 0, 0, 0), (1, 0, 0, 0, 0, 0)], [home, None]), [t, t],
        ...                   [home, None])
        [['velocity_burst', 'amount_far_above_usual', 'high_risk_country'], []]
        """
        n = len(txns)
        col = FEATURE_INDEX
        has_profile = rows[:, col["profile_missing"]] == 0
        usual = np.fromiter([0.0 if p is None else p.avg_amount for p in profiles], np.float64, n)
        amount = np.fromiter([t.amount for t in txns], np.float64, n)
        fired = np.stack(
            [
                rows[:, col["count_1m"]] >= self.velocity_1m,
                has_profile & (amount >= self.amount_multiple * usual),
                (rows[:, col["foreign"]] == 1) & (rows[:, col["high_risk_country"]] == 1),
                (rows[:, col["risky_category"]] == 1) & (rows[:, col["night"]] == 1),
            ],
            axis=1,
        )
        out: list[list[str]] = [[] for _ in range(n)]
        for i, j in zip(*np.nonzero(fired), strict=True):  # in rule order within an event (row-major)
            out[i].append(RULES[j])
        return out

    def explain(self, rule: str, txn: Transaction, feats: Features, profile: CardProfile | None) -> str:
        """A fired rule in words, with the figures that fired it (what an analyst's note quotes).

        >>> from models.transaction import Transaction
        >>> t = Transaction("e", "c", 900.0, "USD", "m", "jewelry", "NG", 1_700_000_000_000, 0.0)
        >>> Policy().explain("velocity_burst", t, (7.0, 0, 0, 0, 0, 0), None)
        '7 payments in the last minute'
        """
        home = (profile.home_country if profile else None) or txn.country
        if rule == "velocity_burst":
            return f"{feats[0]:.0f} payments in the last minute"
        if rule == "amount_far_above_usual" and profile is not None:
            return f"amount {txn.amount / max(profile.avg_amount, 0.01):.1f}x the card's usual"
        if rule == "high_risk_country":
            return f"paid in high-risk country {txn.country} (home {home})"
        if rule == "risky_category_at_night":
            return f"{txn.merchant_category} purchase at night (card-local time)"
        return rule.replace("_", " ")

    def decide(self, score: float, rules: Sequence[str]) -> str:
        if score >= self.decline_at:
            return "decline"
        if score >= self.review_at or (rules and score >= self.review_with_rule_at):
            return "review"
        return "approve"
