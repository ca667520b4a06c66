"""Business rules as data: versioned rule sets, validated on arrival, applied to every recommendation.

A rule set arrives on the ``rules`` topic as JSON and replaces the one in force
when its version is newer; one that fails validation is dead-lettered with the
reason and the previous set stays. Unknown keys are errors, not ignored, so a
typo (``max_per_brnad``) cannot silently switch a rule off.

    {"version": 3,
     "exclusions": {"seen_within_days": 7, "out_of_stock": true},
     "diversity": {"max_per_brand": 2, "max_per_category": 5},
     "boosts": {"context_category": 0.05, "category_affinity": 0.02,
                "promoted": [{"item_id": "i-17", "boost": 0.1, "start": 1767225600000, "end": 1767312000000}]},
     "price_bands": [{"segment": "budget", "user_avg_price": [0, 40], "item_price": [0, 80]}]}

:func:`rank` applies a rule set to over-fetched candidates: exclusions first,
then boosts (each leaves a reason on the item), then the diversity caps while
taking the top ``k``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from models.wire import InvalidEvent, json_object

DAY_MS = 86_400_000.0
MAX_PROMOTIONS = 10_000
MAX_BANDS = 100


@dataclass(frozen=True, slots=True)
class Promotion:
    """An item boosted while ``start_ms <= now < end_ms``."""

    item_id: str
    boost: float
    start_ms: float
    end_ms: float


@dataclass(frozen=True, slots=True)
class PriceBand:
    """Users whose average price falls in ``user_avg_price`` only see items priced in ``item_price``."""

    segment: str
    user_avg_price: tuple[float, float]
    item_price: tuple[float, float]


@dataclass(frozen=True)
class RuleSet:
    """One validated rule set (the defaults are what is in force before any arrives)."""

    version: int = -1
    seen_within_days: float = 30.0
    exclude_out_of_stock: bool = True
    max_per_brand: int = 0  # 0: no cap
    max_per_category: int = 0
    context_category_boost: float = 0.0
    category_affinity_boost: float = 0.0
    promotions: tuple[Promotion, ...] = ()
    price_bands: tuple[PriceBand, ...] = ()
    _running: tuple[float, float, dict[str, Promotion]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def promotions_at(self, now_ms: float) -> Mapping[str, Promotion]:
        """The promotions running at ``now_ms`` by item. A rule set may hold thousands and every request
        asks, so the answer is kept with the interval over which it cannot change (from the latest start
        or end at or before ``now_ms`` to the earliest one after it) and reused inside it.

        >>> rules = RuleSet(promotions=(Promotion("i1", 0.1, 0.0, 60_000.0), Promotion("i2", 0.2, 30_000.0, 90_000.0)))
        >>> [list(rules.promotions_at(t)) for t in (1.0, 29_999.0, 30_000.0, 60_000.0, 90_000.0)]
        [['i1'], ['i1'], ['i1', 'i2'], ['i2'], []]
        """
        if not self.promotions:
            return {}
        cached = self._running
        if cached is not None and cached[0] <= now_ms < cached[1]:
            return cached[2]
        running: dict[str, Promotion] = {}
        since, until = -math.inf, math.inf
        for p in self.promotions:
            if p.start_ms <= now_ms < p.end_ms:
                running[p.item_id] = p
                since, until = max(since, p.start_ms), min(until, p.end_ms)
            elif now_ms < p.start_ms:
                until = min(until, p.start_ms)
            else:
                since = max(since, p.end_ms)
        object.__setattr__(self, "_running", (since, until, running))  # a cache, not part of the value
        return running

    def segment(self, avg_price: float) -> PriceBand | None:
        """The first price band whose user range holds ``avg_price`` (lower bound included)."""
        for band in self.price_bands:
            if band.user_avg_price[0] <= avg_price < band.user_avg_price[1]:
                return band
        return None


def _section(body: dict[str, Any], name: str, keys: set[str]) -> dict[str, Any]:
    value = body.get(name, {})
    if not isinstance(value, dict):
        raise InvalidEvent(f"{name} must be a JSON object")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise InvalidEvent(f"unknown key(s) in {name}: {', '.join(unknown)}")
    return value


def _number(section: dict[str, Any], where: str, name: str, default: float, low: float, high: float) -> float:
    value = section.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidEvent(f"{where}.{name} must be a number from {low:g} to {high:g}")
    return float(value)


def _count(section: dict[str, Any], where: str, name: str) -> int:
    value = section.get(name, 0)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1000:
        raise InvalidEvent(f"{where}.{name} must be a whole number from 0 to 1000 (0: no cap)")
    return value


def _range(value: object, where: str) -> tuple[float, float]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
        or not 0 <= value[0] <= value[1]
    ):
        raise InvalidEvent(f"{where} must be [low, high] with 0 <= low <= high")
    return float(value[0]), float(value[1])


def _promotion(p: object, n: int) -> Promotion:
    where = f"boosts.promoted[{n}]"
    if not isinstance(p, dict) or set(p) - {"item_id", "boost", "start", "end"}:
        raise InvalidEvent(f"{where} must be an object with item_id, boost, start, end")
    item = p.get("item_id")
    if not isinstance(item, str) or not item:
        raise InvalidEvent(f"{where}.item_id must be a non-empty string")
    boost = _number(p, where, "boost", 0.0, -10.0, 10.0)
    start, end = _number(p, where, "start", 0.0, 0, 1e14), _number(p, where, "end", 1e14, 0, 1e14)
    if end <= start:
        raise InvalidEvent(f"{where}: end must be after start")
    return Promotion(item, boost, start, end)


def _band(b: object, n: int) -> PriceBand:
    where = f"price_bands[{n}]"
    if not isinstance(b, dict) or set(b) - {"segment", "user_avg_price", "item_price"}:
        raise InvalidEvent(f"{where} must be an object with segment, user_avg_price, item_price")
    segment = b.get("segment")
    if not isinstance(segment, str) or not segment:
        raise InvalidEvent(f"{where}.segment must be a non-empty string")
    return PriceBand(
        segment,
        _range(b.get("user_avg_price"), f"{where}.user_avg_price"),
        _range(b.get("item_price"), f"{where}.item_price"),
    )


def parse_rule_set(raw: bytes | None) -> RuleSet:
    """Decode and validate a rule set; :class:`InvalidEvent` says what is wrong.

    >>> parse_rule_set(b'{"version": 2, "diversity": {"max_per_brand": 2}}').max_per_brand
    2
    >>> parse_rule_set(b'{"version": 2, "diversity": {"max_per_brnad": 2}}')
    Traceback (most recent call last):
    ...
    models.wire.InvalidEvent: unknown key(s) in diversity: max_per_brnad
    >>> parse_rule_set(b'{"version": 2, "exclusions": {"seen_within_days": -1}}')
    Traceback (most recent call last):
    ...
    models.wire.InvalidEvent: exclusions.seen_within_days must be a number from 0 to 3650
    """
    body = json_object(raw)
    unknown = sorted(set(body) - {"version", "exclusions", "diversity", "boosts", "price_bands", "sent_at"})
    if unknown:
        raise InvalidEvent(f"unknown key(s) in the rule set: {', '.join(unknown)}")
    version = body.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise InvalidEvent("version must be a non-negative integer")
    excl = _section(body, "exclusions", {"seen_within_days", "out_of_stock"})
    div = _section(body, "diversity", {"max_per_brand", "max_per_category"})
    boosts = _section(body, "boosts", {"context_category", "category_affinity", "promoted"})
    out_of_stock = excl.get("out_of_stock", True)
    if not isinstance(out_of_stock, bool):
        raise InvalidEvent("exclusions.out_of_stock must be true or false")
    promoted = boosts.get("promoted", [])
    if not isinstance(promoted, list) or len(promoted) > MAX_PROMOTIONS:
        raise InvalidEvent(f"boosts.promoted must be a list of at most {MAX_PROMOTIONS} promotions")
    bands = body.get("price_bands", [])
    if not isinstance(bands, list) or len(bands) > MAX_BANDS:
        raise InvalidEvent(f"price_bands must be a list of at most {MAX_BANDS} bands")
    return RuleSet(
        version=version,
        seen_within_days=_number(excl, "exclusions", "seen_within_days", 30.0, 0.0, 3650.0),
        exclude_out_of_stock=out_of_stock,
        max_per_brand=_count(div, "diversity", "max_per_brand"),
        max_per_category=_count(div, "diversity", "max_per_category"),
        context_category_boost=_number(boosts, "boosts", "context_category", 0.0, -10.0, 10.0),
        category_affinity_boost=_number(boosts, "boosts", "category_affinity", 0.0, -10.0, 10.0),
        promotions=tuple(_promotion(p, n) for n, p in enumerate(promoted)),
        price_bands=tuple(_band(b, n) for n, b in enumerate(bands)),
    )


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__ (~5x the cost)
class Candidate:
    """An item found for a request, with what the rules need to know about it and how it was found.

    Hundreds are made per request (every hit of the over-fetched search), so it is a plain slotted class;
    treat it as immutable."""

    item_id: str
    score: float
    category: str
    brand: str
    price: float
    in_stock: bool
    found_by: str  # the first reason it is recommended: "similar" (ANN), "popular_in_<category>", ...


@dataclass(frozen=True, slots=True)
class Ranked:
    """A recommended item, its final score and why it is there."""

    item_id: str
    score: float
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Shopper:
    """What the rules know about the person asking: recent items, affinities, price level, context."""

    seen: Mapping[str, float]
    affinity: Mapping[str, float]
    avg_price: float
    context_category: str  # the page's category; "" (home, search) gets no context boost
    now_ms: float


def rank(
    candidates: Iterable[Candidate], k: int, rules: RuleSet, shopper: Shopper, best_first: bool = False
) -> tuple[list[Ranked], dict[str, int]]:
    """The top ``k`` of ``candidates`` under ``rules``, and how many each exclusion removed.

    ``best_first`` says the candidates come in falling score order (an ANN search's hits): then the
    ranking stops as soon as no later candidate can reach the top ``k`` even with every boost that
    could apply to it, so most of an over-fetched list is never looked at (nor, when ``candidates`` is
    a generator, ever built). The top ``k`` is the same either way; ``excluded`` then counts what was
    examined. The stopping test is made when ``k``, ``2k``, ``4k``, ... candidates have been scored, against
    the ``k``-th item of a fresh diversity pass over everything scored so far (a stale one is not safe:
    with both a brand and a category cap, a new high scorer can block two items that were in).

    >>> rules = RuleSet(max_per_brand=1, context_category_boost=0.5)
    >>> cands = [Candidate("a", 0.9, "shoes", "x", 10, True, "similar"), Candidate("b", 0.8, "shoes", "x", 10, True, "similar"),
    ...          Candidate("c", 0.7, "bags", "y", 10, False, "similar"), Candidate("d", 0.6, "bags", "z", 10, True, "similar")]
    >>> top, excluded = rank(cands, 3, rules, Shopper({}, {}, 10.0, "bags", 0.0))
    >>> [(r.item_id, round(r.score, 2), r.reasons) for r in top], excluded
    ([('d', 1.1, ('similar', 'context_category')), ('a', 0.9, ('similar',))], {'out_of_stock': 1, 'diversity': 1})
    """
    band = rules.segment(shopper.avg_price)
    lo, hi = band.item_price if band is not None else (0.0, 0.0)
    seen_after = shopper.now_ms - rules.seen_within_days * DAY_MS if rules.seen_within_days > 0 else None
    seen = shopper.seen if seen_after is not None else {}
    promos = rules.promotions_at(shopper.now_ms)
    check_stock = rules.exclude_out_of_stock
    context, context_boost = shopper.context_category, rules.context_category_boost
    affinity, affinity_boost = shopper.affinity, rules.category_affinity_boost
    excluded: dict[str, int] = {}
    # (-score, item_id, candidate): plain tuple order is "best score first, then item id", and ids are
    # unique here (``taken``), so the candidates themselves are never compared
    scored: list[tuple[float, str, Candidate]] = []
    taken: set[str] = set()
    next_check = k if best_first and k > 0 else math.inf
    most_boost = _most_boost(rules, shopper, promos) if best_first else 0.0
    for c in candidates:
        if len(scored) >= next_check:
            next_check = 2 * len(scored)  # k, 2k, 4k, ...: few passes when it cannot stop early
            chosen = _diverse(sorted(scored), k, rules, None)
            if len(chosen) == k and c.score + most_boost + 1e-9 < -chosen[-1][0]:  # (slack: float sums' order)
                break  # c is the best of the rest, and even fully boosted it would come after the k-th
        item_id = c.item_id
        if item_id in taken:  # found twice (by similarity and by popularity): the first finding counts
            continue
        taken.add(item_id)
        if check_stock and not c.in_stock:
            reason = "out_of_stock"
        elif item_id in seen and seen[item_id] >= seen_after:  # type: ignore[operator]
            reason = "seen"
        elif band is not None and not lo <= c.price <= hi:
            reason = "price_band"
        else:
            score = c.score
            if context_boost and context and c.category == context:
                score += context_boost
            if affinity_boost:
                share = affinity.get(c.category, 0.0)
                if share:
                    score += affinity_boost * share
            if promos:
                promo = promos.get(item_id)
                if promo is not None:
                    score += promo.boost
            scored.append((-score, item_id, c))
            continue
        excluded[reason] = excluded.get(reason, 0) + 1
    scored.sort()
    out = [
        Ranked(item_id, -negative, _reasons(c, rules, shopper, band, promos))
        for negative, item_id, c in _diverse(scored, k, rules, excluded)
    ]
    return out, excluded


def _diverse(
    scored: list[tuple[float, str, Candidate]], k: int, rules: RuleSet, excluded: dict[str, int] | None
) -> list[tuple[float, str, Candidate]]:
    """The first ``k`` of sorted ``scored`` that keep within the diversity caps (skips counted in ``excluded``)."""
    if not rules.max_per_brand and not rules.max_per_category:
        return scored[:k]
    out: list[tuple[float, str, Candidate]] = []
    brands: dict[str, int] = {}
    categories: dict[str, int] = {}
    for row in scored:
        if len(out) == k:
            break
        c = row[2]
        if (rules.max_per_brand and brands.get(c.brand, 0) >= rules.max_per_brand) or (
            rules.max_per_category and categories.get(c.category, 0) >= rules.max_per_category
        ):
            if excluded is not None:
                excluded["diversity"] = excluded.get("diversity", 0) + 1
            continue
        brands[c.brand] = brands.get(c.brand, 0) + 1
        categories[c.category] = categories.get(c.category, 0) + 1
        out.append(row)
    return out


def _most_boost(rules: RuleSet, shopper: Shopper, promos: Mapping[str, Promotion]) -> float:
    """The most any one candidate's score can rise under ``rules`` for this shopper (a term that can only
    lower it counts 0; a negative affinity boost times a negative share raises it, so each share counts)."""
    most = max(rules.context_category_boost, 0.0) if shopper.context_category else 0.0
    if rules.category_affinity_boost and shopper.affinity:
        most += max(0.0, *(rules.category_affinity_boost * share for share in shopper.affinity.values()))
    if promos:
        most += max(0.0, *(p.boost for p in promos.values()))
    return most


def _reasons(
    c: Candidate, rules: RuleSet, shopper: Shopper, band: PriceBand | None, promos: Mapping[str, Promotion]
) -> tuple[str, ...]:
    """Why a ranked item is where it is: how it was found, then each boost it got (the same tests as the
    scoring in :func:`rank`, made only for the ``k`` items returned, not for every candidate)."""
    reasons = [c.found_by]
    if rules.context_category_boost and shopper.context_category and c.category == shopper.context_category:
        reasons.append("context_category")
    if rules.category_affinity_boost and shopper.affinity.get(c.category, 0.0):
        reasons.append("category_affinity")
    if c.item_id in promos:
        reasons.append("promoted")
    if band is not None:
        reasons.append(f"price_band:{band.segment}")
    return tuple(reasons)
