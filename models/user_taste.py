"""A user's taste from their interactions: a time-decayed embedding, recent items, category affinities.

The pure core of the personalization flow's user state (no I/O, no clock: every
time is an event time carried by an interaction).

**Decay.** An interaction of kind weight ``w`` at event time ``t`` counts
``w * 2 ** (-(now - t) / half_life)`` at time ``now``. The state keeps every
decayed sum at one reference time, the newest event time seen (``ref_ms``): a
newer event first decays the sums to its own time, an older one (out of order)
is added already decayed. So the sums depend on the *set* of events, not on
their arrival order (checked with hypothesis in ``tests/test_personalize_models.py``),
and a replay after a crash rebuilds exactly what a crash-free run holds.

**What the online store gets** (:meth:`Taste.to_fields`): the unit float32
vector as raw bytes, the interaction position it reflects (``version``: writes
are versioned by it, so a replay never moves a vector backwards), recent items
with their times (exclusions), category shares (affinities) and the decayed
average price (price bands by segment). :func:`parse_user_profile` reads that
hash back, checking the vector's dimension.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from models.shopping import Kind

DEFAULT_KIND_WEIGHTS = "view=1,click=2,add_to_cart=4,purchase=8"


def parse_kind_weights(spec: str) -> dict[Kind, float]:
    """``view=1,click=2,...`` -> weight per kind; every kind must be given a positive weight.

    >>> parse_kind_weights(DEFAULT_KIND_WEIGHTS)[Kind.PURCHASE]
    8.0
    >>> parse_kind_weights("view=1")
    Traceback (most recent call last):
    ...
    ValueError: give a weight for every kind: view, click, add_to_cart, purchase (e.g. view=1,click=2,add_to_cart=4,purchase=8)
    """
    weights: dict[Kind, float] = {}
    try:
        for part in spec.split(","):
            name, _, value = part.partition("=")
            weights[Kind(name.strip())] = float(value)
    except ValueError:
        weights = {}
    if set(weights) != set(Kind) or not all(w > 0 and math.isfinite(w) for w in weights.values()):
        kinds = ", ".join(k.value for k in Kind)
        raise ValueError(f"give a weight for every kind: {kinds} (e.g. {DEFAULT_KIND_WEIGHTS})")
    return weights


def decay(dt_ms: float, half_life_ms: float) -> float:
    """The factor a weight keeps after ``dt_ms``: halves every ``half_life_ms``.

    >>> decay(0, 1000), decay(1000, 1000), decay(3000, 1000)
    (1.0, 0.5, 0.125)
    """
    return float(2.0 ** (-max(0.0, dt_ms) / half_life_ms))


@dataclass
class Taste:
    """One user's decayed taste; :meth:`add` an interaction, :meth:`to_fields` for the online store.

    >>> t = Taste(dim=2, half_life_ms=1000.0)
    >>> t.add("a", np.array([1.0, 0.0], dtype=np.float32), "shoes", 50.0, weight=1.0, t_ms=0.0, version=10)
    >>> t.add("b", np.array([0.0, 1.0], dtype=np.float32), "bags", 10.0, weight=1.0, t_ms=1000.0, version=11)
    >>> [round(float(x), 3) for x in t.unit_vector()]  # "a" has decayed to half of "b"
    [0.447, 0.894]
    >>> round(t.avg_price, 2), t.affinities(), t.version
    (23.33, {'bags': 0.667, 'shoes': 0.333}, 11)
    """

    dim: int
    half_life_ms: float
    max_seen: int = 100  # remembered items: at most max_seen + max_seen // 4 between trims, the newest kept
    vector: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))  # zeros(dim) when not given
    ref_ms: float = 0.0
    weight: float = 0.0
    price_sum: float = 0.0
    affinity: dict[str, float] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    version: int = -1
    count: int = 0

    def __post_init__(self) -> None:
        if len(self.vector) == 0:
            self.vector = np.zeros(self.dim, dtype=np.float32)

    def add(
        self,
        item_id: str,
        item_vector: np.ndarray,
        category: str,
        price: float,
        weight: float,
        t_ms: float,
        version: int,
    ) -> None:
        """Count one interaction (``weight`` by its kind) at event time ``t_ms``; ``version`` is its position."""
        if self.count == 0 or t_ms > self.ref_ms:
            if self.count:
                f = decay(t_ms - self.ref_ms, self.half_life_ms)
                self.vector *= np.float32(f)
                self.weight *= f
                self.price_sum *= f
                self.affinity = {c: a * f for c, a in self.affinity.items() if a * f > 1e-9}
            self.ref_ms = t_ms
            w = weight
        else:
            w = weight * decay(self.ref_ms - t_ms, self.half_life_ms)
        self.vector += np.float32(w) * item_vector.astype(np.float32, copy=False)
        self.weight += w
        self.price_sum += w * price
        self.affinity[category] = self.affinity.get(category, 0.0) + w
        if t_ms >= self.seen.get(item_id, -math.inf):
            self.seen[item_id] = t_ms
        if len(self.seen) > self.max_seen + max(
            1, self.max_seen // 4
        ):  # trimmed in steps: sorting per event cost 30 us
            keep = sorted(self.seen.items(), key=lambda kv: (kv[1], kv[0]))[-self.max_seen :]
            self.seen = dict(keep)
        self.version = max(self.version, version)
        self.count += 1

    def unit_vector(self) -> np.ndarray | None:
        """The taste direction (unit float32), or None before any weight was counted."""
        norm = float(np.linalg.norm(self.vector))
        if norm < 1e-12:
            return None
        return (self.vector / norm).astype(np.float32)

    @property
    def avg_price(self) -> float:
        return self.price_sum / self.weight if self.weight > 0 else 0.0

    def affinities(self, top: int = 8) -> dict[str, float]:
        """The ``top`` categories' shares of the decayed weight, largest first."""
        if self.weight <= 0:
            return {}
        best = sorted(self.affinity.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        return {c: round(a / self.weight, 3) for c, a in best}

    def to_fields(self) -> dict[str, bytes]:
        """The user's hash in the online store (see the module docstring); written once per user and batch,
        so it stays cheap: the recent items go out as held, unsorted."""
        vector = self.unit_vector()
        seen = list(self.seen.items())
        return {
            "vector": b"" if vector is None else vector.tobytes(),
            "dim": str(self.dim).encode(),
            "version": str(self.version).encode(),
            "ref_ms": repr(self.ref_ms).encode(),
            "count": str(self.count).encode(),
            "avg_price": repr(round(self.avg_price, 4)).encode(),
            "seen": orjson.dumps(seen),
            "affinity": orjson.dumps(self.affinities()),
        }

    def state(self) -> dict[str, Any]:
        """A copy of everything (what the flow checkpoints)."""
        return {
            "dim": self.dim,
            "half_life_ms": self.half_life_ms,
            "max_seen": self.max_seen,
            "vector": self.vector.copy(),
            "ref_ms": self.ref_ms,
            "weight": self.weight,
            "price_sum": self.price_sum,
            "affinity": dict(self.affinity),
            "seen": dict(self.seen),
            "version": self.version,
            "count": self.count,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Taste:
        return cls(
            **{
                **state,
                "vector": np.array(state["vector"], dtype=np.float32),
                "affinity": dict(state["affinity"]),
                "seen": dict(state["seen"]),
            }
        )


@dataclass(frozen=True, slots=True)
class UserProfile:
    """A user's hash read back from the online store."""

    vector: np.ndarray | None
    version: int
    seen: dict[str, float]
    affinity: dict[str, float]
    avg_price: float


def parse_user_profile(fields: Mapping[bytes, bytes], dim: int) -> UserProfile:
    """Read a user's hash; ``ValueError`` says why it cannot be used (wrong dimension, bad metadata).

    >>> t = Taste(dim=2, half_life_ms=1000.0)
    >>> t.add("a", np.array([3.0, 4.0], dtype=np.float32), "shoes", 5.0, 1.0, 0.0, 7)
    >>> fields = {k.encode(): v for k, v in t.to_fields().items()}  # as Redis hands them back
    >>> p = parse_user_profile(fields, dim=2)
    >>> p.vector.tolist(), p.version, list(p.seen)
    ([0.6000000238418579, 0.800000011920929], 7, ['a'])
    >>> parse_user_profile(fields, dim=3)
    Traceback (most recent call last):
    ...
    ValueError: user vector has 2 dimensions, expected 3
    """
    raw = fields.get(b"vector", b"")
    vector: np.ndarray | None = None
    if raw:
        if len(raw) % 4:
            raise ValueError(f"user vector of {len(raw)} bytes is not float32")
        vector = np.frombuffer(raw, dtype=np.float32)
        if len(vector) != dim:
            raise ValueError(f"user vector has {len(vector)} dimensions, expected {dim}")
        if not np.isfinite(vector).all():
            raise ValueError("user vector holds NaN or infinite values")
    try:
        seen = {str(item): float(t) for item, t in orjson.loads(fields.get(b"seen", b"[]"))}
        affinity = {str(c): float(a) for c, a in orjson.loads(fields.get(b"affinity", b"{}")).items()}
        return UserProfile(
            vector, int(fields.get(b"version", b"-1")), seen, affinity, float(fields.get(b"avg_price", b"0"))
        )
    except (orjson.JSONDecodeError, TypeError, AttributeError) as exc:
        raise ValueError(f"user metadata is malformed ({type(exc).__name__})") from None
