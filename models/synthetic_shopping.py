"""A seeded synthetic shop: a catalogue with generated texts, users with drifting tastes, their interactions.

Why synthetic: no public interaction data set with item *texts* ships inside a
PyPI package (the MovieLens packages on PyPI download the data at run time,
which nothing here may do), and the flow embeds item texts.

**Catalogue.** 20 categories, each with its own vocabulary (nouns and feature
words), styles (sub-topics) and brands. An item belongs to one (category,
style, brand) cluster; its title is ``"<brand> <style> <noun>"`` and its
description a few style and feature words, so items of one cluster are close
in the encoder's space. Each item has a popularity weight (Zipf within its
cluster) and a price from its category, brand tier and noise.

**Users.** Each has three interests (a cluster each, with weights); an
interaction picks an interest, then an item: from the exact cluster (75%),
the same style of any brand (20%) or the same category (5%), by popularity (heavy-tailed),
usually one not seen before. Tastes drift: after each interaction one interest
is replaced with probability ``drift``. Kinds: 65% views, 22% clicks, 9%
add-to-cart, 4% purchases.

**Held out.** After a user's stream, :meth:`ShopSimulation.held_out` draws the
next *new* item they interact with: the ground truth for HitRate@10 / NDCG@10.

The same seed always gives the same shop, users, interactions and held-out items.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from models.shopping import CatalogItem, Interaction, Kind

CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...], float]] = {
    # category: (nouns, feature words, base price)
    "footwear": (("trail shoe", "sneaker", "boot", "sandal", "loafer", "running shoe"), ("cushioned", "grippy", "breathable", "leather", "mesh", "arch support", "lace-up", "slip-on"), 80),
    "outerwear": (("rain jacket", "parka", "fleece", "windbreaker", "down vest", "softshell"), ("hooded", "insulated", "packable", "seam-sealed", "zippered", "lined", "water-repellent", "stretch"), 120),
    "kitchen": (("chef knife", "skillet", "saucepan", "cutting board", "stockpot", "wok"), ("stainless", "cast iron", "nonstick", "ergonomic", "dishwasher-safe", "forged", "induction-ready", "riveted"), 60),
    "coffee": (("espresso machine", "grinder", "pour-over kettle", "french press", "moka pot", "milk frother"), ("burr", "gooseneck", "temperature control", "thermal", "borosilicate", "programmable", "single-origin", "crema"), 90),
    "audio": (("headphones", "earbuds", "speaker", "soundbar", "turntable", "amplifier"), ("noise-cancelling", "wireless", "bluetooth", "hi-fi", "bass-boosted", "studio", "waterproof", "long battery"), 150),
    "camping": (("tent", "sleeping bag", "camp stove", "headlamp", "backpack", "trekking pole"), ("ultralight", "four-season", "waterproof", "compact", "rechargeable", "adjustable", "down-filled", "freestanding"), 110),
    "fitness": (("yoga mat", "dumbbell", "kettlebell", "resistance band", "foam roller", "jump rope"), ("non-slip", "adjustable", "cast", "high-density", "textured", "portable", "weighted", "eco"), 40),
    "books": (("novel", "cookbook", "biography", "thriller", "poetry collection", "travel guide"), ("hardcover", "paperback", "illustrated", "bestselling", "annotated", "first edition", "award-winning", "pocket"), 20),
    "toys": (("building set", "puzzle", "plush toy", "board game", "model kit", "remote car"), ("educational", "wooden", "collectible", "family", "strategy", "glow", "magnetic", "battery-powered"), 35),
    "garden": (("pruner", "hose", "planter", "trowel", "seed kit", "watering can"), ("galvanized", "ceramic", "expandable", "organic", "heirloom", "self-watering", "bypass", "ergonomic"), 30),
    "beauty": (("moisturizer", "serum", "lipstick", "shampoo", "sunscreen", "face mask"), ("hydrating", "fragrance-free", "vegan", "matte", "spf", "vitamin c", "nourishing", "gentle"), 25),
    "watches": (("dive watch", "chronograph", "smartwatch", "field watch", "dress watch", "fitness tracker"), ("automatic", "sapphire", "titanium", "gps", "heart rate", "luminous", "quartz", "water-resistant"), 200),
    "furniture": (("armchair", "bookshelf", "desk", "bed frame", "sofa", "side table"), ("oak", "walnut", "upholstered", "modular", "mid-century", "reclaimed", "foldable", "velvet"), 300),
    "lighting": (("desk lamp", "floor lamp", "pendant light", "string lights", "wall sconce", "night light"), ("dimmable", "led", "warm white", "brass", "smart", "rattan", "adjustable arm", "solar"), 50),
    "pets": (("dog bed", "cat tree", "leash", "pet bowl", "chew toy", "aquarium"), ("orthopedic", "scratch-resistant", "reflective", "stainless", "durable", "washable", "calming", "filtered"), 35),
    "cycling": (("road bike", "bike helmet", "bike light", "saddle", "cycling jersey", "bike lock"), ("carbon", "aero", "usb-rechargeable", "padded", "breathable", "u-lock", "gravel", "lightweight"), 140),
    "gaming": (("controller", "gaming mouse", "mechanical keyboard", "headset", "monitor", "gaming chair"), ("rgb", "low-latency", "ergonomic", "hot-swappable", "144hz", "surround", "wireless", "programmable"), 90),
    "baby": (("stroller", "car seat", "baby carrier", "crib", "high chair", "baby monitor"), ("convertible", "lightweight", "organic cotton", "foldable", "washable", "video", "adjustable", "travel"), 120),
    "tea": (("teapot", "loose leaf tea", "tea kettle", "matcha set", "tea infuser", "tea sampler"), ("green", "oolong", "earl grey", "ceramic", "cast iron", "whisk", "herbal", "jasmine"), 25),
    "art supplies": (("watercolor set", "sketchbook", "acrylic paint", "brush set", "easel", "colored pencils"), ("professional", "archival", "heavyweight", "synthetic", "vibrant", "portable", "blendable", "artist-grade"), 30),
}  # fmt: skip
STYLES = (
    "classic", "vintage", "modern", "rustic", "minimalist", "bold", "pastel", "neon", "heritage", "urban",
    "alpine", "coastal", "nordic", "tropical", "retro", "futuristic", "artisan", "premium", "budget", "eco",
    "luxury", "sporty", "elegant", "playful", "industrial", "bohemian", "tactical", "compact", "oversized", "handmade",
    "rugged", "sleek", "cozy", "vibrant", "earthy", "monochrome", "glossy", "matte", "pro", "essential",
)  # fmt: skip
SYLLABLES = ("ka", "lo", "ve", "ra", "tin", "mo", "zu", "bel", "cor", "dan", "fi", "gor", "hal", "is", "jun",
             "kes", "lum", "nor", "ost", "pra", "quil", "ros", "sen", "tor", "ul", "vin", "wex", "yor", "zan")  # fmt: skip
KINDS: tuple[tuple[Kind, float], ...] = (
    (Kind.VIEW, 0.65),
    (Kind.CLICK, 0.22),
    (Kind.ADD_TO_CART, 0.09),
    (Kind.PURCHASE, 0.04),
)
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Shape:
    """How the catalogue is divided: categories x styles x brands clusters."""

    styles: int
    brands: int

    @classmethod
    def for_size(cls, n_items: int) -> Shape:
        """About 20 items per cluster at 100k items, fewer styles and brands for small catalogues.

        >>> Shape.for_size(100_000), Shape.for_size(2_000)
        (Shape(styles=20, brands=12), Shape(styles=2, brands=2))
        """
        per_category = max(1, n_items // len(CATEGORIES))
        styles = max(2, min(20, per_category // 80))
        return cls(styles, max(2, min(12, per_category // (styles * 20))))


def _brand_name(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()


@dataclass(frozen=True, slots=True)
class ItemFacts:
    """The generator's view of an item: its cluster and popularity (never sent anywhere)."""

    category: int
    style: int
    brand: int
    popularity: float


def make_catalogue(n_items: int, seed: int) -> tuple[list[CatalogItem], list[ItemFacts]]:
    """``n_items`` items (ids ``i0``, ``i1``, ...) and their facts; the same seed gives the same shop."""
    rng = random.Random(f"catalogue-{seed}")
    shape = Shape.for_size(n_items)
    names = list(CATEGORIES)
    styles = {
        c: (rng.sample(STYLES, shape.styles), rng.sample(STYLES, shape.styles)) for c in names
    }  # two words a style
    brands = {c: [_brand_name(rng) for _ in range(shape.brands)] for c in names}
    tiers = {c: [rng.uniform(0.5, 2.5) for _ in range(shape.brands)] for c in names}
    items, facts = [], []
    for i in range(n_items):
        ci = i % len(names)
        j = i // len(names)
        si, bi = j % shape.styles, (j // shape.styles) % shape.brands
        cat = names[ci]
        nouns, features, base = CATEGORIES[cat]
        noun = nouns[rng.randrange(len(nouns))]
        style, style2 = styles[cat][0][si], styles[cat][1][si]
        feats = rng.sample(features, 3)
        description = f"{style2} {feats[0]} {noun} with {feats[1]} and {feats[2]} details"
        price = round(base * tiers[cat][bi] * math.exp(rng.gauss(0, 0.3)), 2)
        items.append(
            CatalogItem(
                f"i{i}",
                1,
                f"{brands[cat][bi]} {style} {noun}",
                description,
                cat,
                brands[cat][bi],
                price,
                in_stock=rng.random() > 0.02,
            )
        )
        facts.append(ItemFacts(ci, si, bi, rng.paretovariate(1.0)))  # heavy-tailed: a few items lead each cluster
    return items, facts


class _Groups:
    """Items grouped by cluster, style and category, sampled by popularity (cumulative weights)."""

    def __init__(self, facts: list[ItemFacts]) -> None:
        self.by: dict[tuple[int, ...], tuple[list[int], list[float]]] = {}
        members: dict[tuple[int, ...], list[int]] = {}
        for i, f in enumerate(facts):
            groups: tuple[tuple[int, ...], ...] = ((f.category, f.style, f.brand), (f.category, f.style), (f.category,))
            for group in groups:
                members.setdefault(group, []).append(i)
        for group, ids in members.items():
            self.by[group] = (ids, list(itertools.accumulate(facts[i].popularity for i in ids)))

    def sample(self, key: tuple[int, ...], rng: random.Random) -> int:
        ids, cum = self.by[key]
        return ids[min(len(ids) - 1, bisect.bisect_left(cum, rng.random() * cum[-1]))]


@dataclass
class _User:
    user_id: str
    interests: list[tuple[int, int, int]]
    weights: list[float]
    seen: set[int]


class ShopSimulation:
    """Users and their interactions over a catalogue; deterministic for a seed.

    >>> sim = ShopSimulation(make_catalogue(2000, 1), n_users=50, seed=1)
    >>> events = list(sim.interactions(per_user=4, end_ms=10 * HOUR_MS, span_ms=HOUR_MS))
    >>> len(events), events[0].event_time_ms <= events[-1].event_time_ms
    (200, True)
    >>> held = sim.held_out(end_ms=10 * HOUR_MS)
    >>> len(held), all(h.item_id not in {e.item_id for e in events if e.user_id == h.user_id} for h in held)
    (50, True)
    """

    def __init__(
        self, catalogue: tuple[list[CatalogItem], list[ItemFacts]], n_users: int, seed: int, drift: float = 0.03
    ) -> None:
        self.items, self.facts = catalogue
        self.shape = Shape.for_size(len(self.items))
        self.groups = _Groups(self.facts)
        self.rng = random.Random(f"users-{seed}")
        self.drift = drift
        self.users = [self._new_user(f"u{n}") for n in range(n_users)]

    def _interest(self) -> tuple[int, int, int]:
        f = self.facts[self.rng.randrange(len(self.facts))]  # clusters weighted by size
        return (f.category, f.style, f.brand)

    def _new_user(self, user_id: str) -> _User:
        weights = [self.rng.gammavariate(1.0, 1.0) for _ in range(3)]
        return _User(user_id, [self._interest() for _ in range(3)], weights, set())

    def _next_item(self, user: _User, new_only: bool) -> int:
        rng = self.rng
        c, s, b = rng.choices(user.interests, user.weights)[0]
        for _ in range(8):
            r = rng.random()
            key: tuple[int, ...] = (c, s, b) if r < 0.75 else (c, s) if r < 0.95 else (c,)
            item = self.groups.sample(key, rng)
            if item not in user.seen or (not new_only and rng.random() < 0.2):
                return item
        if new_only:  # popular items are all seen: the style's (or category's) first unseen one
            for key in ((c, s), (c,)):
                unseen = [i for i in self.groups.by[key][0] if i not in user.seen]
                if unseen:
                    return unseen[rng.randrange(len(unseen))]
        return item

    def _kind(self) -> Kind:
        return self.rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]

    def _act(self, user: _User, t_ms: float, new_only: bool = False) -> Interaction:
        item = self._next_item(user, new_only)
        user.seen.add(item)
        if self.rng.random() < self.drift:
            user.interests[self.rng.randrange(3)] = self._interest()
        return Interaction(user.user_id, self.items[item].item_id, self._kind(), float(t_ms))

    def interactions(self, per_user: int, end_ms: float, span_ms: float) -> Iterator[Interaction]:
        """``per_user`` interactions for every user, at random times in ``(end_ms - span_ms, end_ms]``, in time order."""
        times = []
        for n, _user in enumerate(self.users):
            for t in sorted(self.rng.uniform(end_ms - span_ms, end_ms) for _ in range(per_user)):
                times.append((int(t), n))
        heapq.heapify(times)
        while times:
            t, n = heapq.heappop(times)
            yield self._act(self.users[n], t)

    def stream(self, start_ms: float, rate_per_s: float) -> Iterator[Interaction]:
        """An endless stream from random users at ``rate_per_s`` of event time from ``start_ms`` (load tests)."""
        for n in itertools.count():
            yield self._act(self.users[self.rng.randrange(len(self.users))], start_ms + 1000.0 * n / rate_per_s)

    def held_out(self, end_ms: float) -> list[Interaction]:
        """Every user's next interaction with an item they have not interacted with (the ground truth)."""
        return [self._act(user, end_ms + 1, new_only=True) for user in self.users]
