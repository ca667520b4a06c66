"""Load the generated cards' profiles into Redis: ``python -m sluice.profiles --seed 7``."""

from __future__ import annotations

import argparse
import sys

from sluice.generator import make_cards
from sluice.settings import Settings
from state.feature_store import FeatureStore


def load_profiles(settings: Settings, seed: int, n_cards: int, chunk: int = 5000) -> int:
    """Write every card's profile (absolute values, so reloading is harmless); returns the count."""
    store = FeatureStore(settings.redis_url, "card", socket_timeout_s=5.0)
    cards = make_cards(n_cards, seed)
    for i in range(0, len(cards), chunk):
        store.put_many({c.card_id: c.profile() for c in cards[i : i + chunk]})
    store.close()
    return len(cards)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cards", type=int, default=20_000)
    args = parser.parse_args(argv)
    n = load_profiles(Settings.from_env(), args.seed, args.cards)
    print(f"loaded {n} card profiles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
