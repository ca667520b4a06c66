"""Load the generated cards' profiles into Redis: ``sluice produce profiles --seed 7``."""

from __future__ import annotations

from models.synthetic_transactions import make_cards
from sluice.settings import FlowSettings
from state.feature_store import FeatureStore, Profile


def load_profiles(settings: FlowSettings, seed: int, n_cards: int, chunk: int = 5000) -> int:
    """Write every card's profile (absolute values, so reloading is harmless); returns the count."""
    store: FeatureStore[Profile] = FeatureStore(settings.redis_url, "card", socket_timeout_s=5.0)
    cards = make_cards(n_cards, seed)
    for i in range(0, len(cards), chunk):
        store.put_many({c.card_id: c.profile() for c in cards[i : i + chunk]})
    store.close()
    return len(cards)
