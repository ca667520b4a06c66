"""The fraud decision policy: rules that flag a transaction, and thresholds that turn a score into a decision.

Training uses the same rules to know which events the flow escalates to the
sequence model (any fired rule does), so the stage-2 model is trained on the
events it will see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from models.fraud_features import HIGH_RISK_COUNTRIES, RISKY_CATEGORIES, CardProfile, local_hour
from models.transaction import Transaction

Features = tuple[float, ...]


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
        """Names of the rules this event breaks."""
        fired = []
        home = (profile.home_country if profile else None) or txn.country
        if feats[0] >= self.velocity_1m:
            fired.append("velocity_burst")
        if profile and txn.amount >= self.amount_multiple * profile.avg_amount:
            fired.append("amount_far_above_usual")
        if txn.country != home and txn.country in HIGH_RISK_COUNTRIES:
            fired.append("high_risk_country")
        if txn.merchant_category in RISKY_CATEGORIES and 0 <= local_hour(txn.event_time_ms, home) < 5:
            fired.append("risky_category_at_night")
        return fired

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
