"""Distribution drift: the population stability index (PSI) of a window of values against a reference.

A model keeps working only while it sees data like what it was trained on. The
reference is a histogram taken at training time (cut points and the share of
training values in each bin, saved next to the model artifact); the serving
side counts each window's values into the same bins and compares:

    PSI = sum over bins of (actual_i - expected_i) * ln(actual_i / expected_i)

PSI is 0 for identical shares, symmetric, and grows with the difference; the
usual reading is < 0.1 stable, 0.1-0.25 drifting, > 0.25 shifted. Bins are
reference quantiles (each holds about the same share of training values, so
the index is equally sensitive across the range) or, for a feature with few
distinct values (a 0/1 flag), one bin per value. A bin that is empty on one
side would make the logarithm infinite, so shares are floored (``FLOOR``).

Everything here is plain data and numpy: the drift operator
(:mod:`operators.alarms`) windows it, training writes :class:`ModelReference`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FLOOR = 1e-4  # share given to an empty bin (about "1 in 10,000") so that ln() stays finite
REFERENCE_FILE = "drift_reference.json"  # the name a model artifact stores its reference under


def reference_file(model: str | None = None) -> str:
    """``drift_reference.json``, or ``drift_reference.<model>.json`` for one model of several in an artifact."""
    return REFERENCE_FILE if model is None else f"drift_reference.{model}.json"


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, floor: float = FLOOR) -> float:
    """Population stability index of ``actual`` against ``expected`` (counts or shares over the same bins).

    >>> psi([50, 50], [50, 50])
    0.0
    >>> round(psi([0.5, 0.5], [0.9, 0.1]), 3)
    0.879
    >>> psi([1, 0], [0, 1]) > 10   # disjoint: very large, but finite
    True
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.ndim != 1 or len(e) == 0:
        raise ValueError(f"psi needs two 1-d distributions over the same bins, got {e.shape} and {a.shape}")
    if e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi needs at least one value on each side")
    e = np.maximum(e / e.sum(), floor)
    a = np.maximum(a / a.sum(), floor)
    return float(max(0.0, np.sum((a - e) * np.log(a / e))))


def cut_points(values: np.ndarray, bins: int) -> tuple[float, ...]:
    """Interior cut points that split ``values`` into at most ``bins`` bins of about equal share.

    A value equal to a cut falls in the lower bin. With no more distinct values than
    bins (flags, small counts), every value gets its own bin (cuts halfway between).
    Quantiles that land on the largest value (a mass of ties at the top, such as a
    capped feature) would leave the top bin empty and are dropped; if no cut then
    separates the tied mass from the values below it, the next distinct value becomes
    a cut, so that the mass keeps a bin of its own and a window without it still
    shows as drift.

    >>> cut_points(np.array([0.0, 0.0, 1.0, 0.0]), 10)
    (0.5,)
    >>> cut_points(np.arange(100.0), 4)
    (24.75, 49.5, 74.25)
    >>> cut_points(np.r_[np.arange(20.0), [100.0] * 80], 4)  # 80% tied at the top
    (19.0,)
    """
    if bins < 2:
        raise ValueError("bins must be >= 2")
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        raise ValueError("no finite values to take cut points from")
    distinct = np.unique(finite)
    if len(distinct) <= bins:
        return tuple(float(x) for x in (distinct[:-1] + distinct[1:]) / 2.0)
    quantiles = np.quantile(finite, np.arange(1, bins) / bins)
    cuts = np.unique(quantiles[quantiles < distinct[-1]])
    if len(cuts) < len(quantiles) and (len(cuts) == 0 or cuts[-1] < distinct[-2]):
        cuts = np.append(cuts, distinct[-2])  # everything below the tied top in the bins under it
    return tuple(float(c) for c in cuts)


@dataclass(frozen=True)
class Reference:
    """A distribution to compare windows against: interior cut points and each bin's share.

    >>> ref = Reference.from_values(np.arange(1000.0), bins=4)
    >>> ref.proportions
    (0.25, 0.25, 0.25, 0.25)
    >>> ref.counts(np.array([10.0, 900.0, 950.0])).tolist()
    [1, 0, 0, 2]
    >>> round(ref.psi(ref.counts(np.arange(1000.0))), 6)
    0.0
    """

    cuts: tuple[float, ...]
    proportions: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.proportions) != len(self.cuts) + 1:
            raise ValueError(f"{len(self.cuts)} cut points need {len(self.cuts) + 1} proportions")
        if list(self.cuts) != sorted(self.cuts):
            raise ValueError("cut points must be increasing")
        if any(p < 0 for p in self.proportions) or not math.isclose(sum(self.proportions), 1.0, abs_tol=1e-6):
            raise ValueError("proportions must be non-negative and sum to 1")

    @property
    def bins(self) -> int:
        return len(self.proportions)

    @classmethod
    def from_values(cls, values: Sequence[float] | np.ndarray, bins: int = 10) -> Reference:
        """The reference of a training sample: quantile cuts and the sample's own shares."""
        arr = np.asarray(values, dtype=np.float64)
        cuts = cut_points(arr, bins)
        counts = np.bincount(np.searchsorted(cuts, arr[np.isfinite(arr)], side="left"), minlength=len(cuts) + 1)
        return cls(cuts, tuple(float(c) for c in counts / counts.sum()))

    def counts(self, values: np.ndarray) -> np.ndarray:
        """How many of ``values`` fall in each bin (non-finite values are left out)."""
        arr = np.asarray(values, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        return np.bincount(np.searchsorted(self.cuts, finite, side="left"), minlength=self.bins)

    def psi(self, counts: Sequence[float] | np.ndarray) -> float:
        """PSI of a window's bin counts against this reference."""
        return psi(self.proportions, counts)

    def to_dict(self) -> dict[str, Any]:
        return {"cuts": list(self.cuts), "proportions": list(self.proportions)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Reference:
        return cls(tuple(float(c) for c in raw["cuts"]), tuple(float(p) for p in raw["proportions"]))


@dataclass(frozen=True)
class FeatureReference:
    """A model input's reference and which column of a feature row holds it."""

    column: int
    reference: Reference


SCORE = "score"  # the series name of a model's output


@dataclass(frozen=True)
class ModelReference:
    """What a model saw in training: its score distribution and its top features', saved with the artifact.

    >>> rng = np.random.default_rng(0)
    >>> rows = rng.normal(size=(2000, 3))
    >>> ref = ModelReference.build("m", rows[:, 0] > 0, rows, ["a", "b", "c"], top=["a", "c"])
    >>> sorted(ref.series())
    ['a', 'c', 'score']
    >>> ModelReference.from_json(ref.to_json()) == ref
    True
    """

    model: str
    score: Reference
    features: Mapping[str, FeatureReference] = field(default_factory=dict)

    def series(self) -> dict[str, Reference]:
        """Every watched series: ``score`` and each feature, with its reference."""
        return {SCORE: self.score} | {name: f.reference for name, f in self.features.items()}

    @classmethod
    def build(
        cls,
        model: str,
        scores: Sequence[float] | np.ndarray,
        rows: np.ndarray | None = None,
        names: Sequence[str] = (),
        top: Sequence[str] = (),
        bins: int = 10,
    ) -> ModelReference:
        """The reference of a training (or held-out) sample: ``scores``, and the ``top`` named columns of ``rows``."""
        features: dict[str, FeatureReference] = {}
        if top:
            if rows is None:
                raise ValueError("feature references need the feature rows")
            for name in top:
                col = list(names).index(name)
                features[name] = FeatureReference(col, Reference.from_values(rows[:, col], bins))
        return cls(model, Reference.from_values(scores, bins), features)

    def to_json(self) -> str:
        body = {
            "model": self.model,
            "score": self.score.to_dict(),
            "features": {n: {"column": f.column, **f.reference.to_dict()} for n, f in self.features.items()},
        }
        return json.dumps(body, indent=1)

    @classmethod
    def from_json(cls, text: str) -> ModelReference:
        raw = json.loads(text)
        features = {
            name: FeatureReference(int(f["column"]), Reference.from_dict(f)) for name, f in raw["features"].items()
        }
        return cls(str(raw["model"]), Reference.from_dict(raw["score"]), features)

    def save(self, folder: str | Path, per_model: bool = False) -> Path:
        """Write ``folder/drift_reference.json`` next to the model's weights (``drift_reference.<model>.json``
        with ``per_model``: an artifact holding several models, a cascade's stages)."""
        path = Path(folder) / reference_file(self.model if per_model else None)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelReference:
        """Read a reference file, or ``folder/drift_reference.json``."""
        p = Path(path)
        return cls.from_json((p / REFERENCE_FILE if p.is_dir() else p).read_text())


class DriftCounts:
    """A window's bin counts for every series of a :class:`ModelReference`, filled a batch at a time.

    >>> ref = ModelReference("m", Reference((0.5,), (0.9, 0.1)))
    >>> w = DriftCounts(ref)
    >>> w.add(np.array([0.1] * 50 + [0.9] * 50))
    >>> w.count, round(w.psi()["score"], 3)
    (100, 0.879)
    """

    def __init__(self, reference: ModelReference, state: Mapping[str, list[int]] | None = None) -> None:
        self.reference = reference
        self._series = reference.series()
        self._counts = {
            name: np.asarray(state[name], dtype=np.int64) if state and name in state else np.zeros(r.bins, np.int64)
            for name, r in self._series.items()
        }

    @property
    def count(self) -> int:
        """Scores counted in this window."""
        return int(self._counts[SCORE].sum())

    def add(self, scores: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Count a batch: its scores and, when given, the watched columns of its feature rows."""
        self._counts[SCORE] += self.reference.score.counts(scores)
        if rows is not None and len(rows):
            for name, feat in self.reference.features.items():
                self._counts[name] += feat.reference.counts(rows[:, feat.column])

    def psi(self) -> dict[str, float]:
        """PSI of every series that has values in this window."""
        return {name: self._series[name].psi(c) for name, c in self._counts.items() if c.sum() > 0}

    def state(self) -> dict[str, list[int]]:
        """A copy of the counts (what a checkpoint keeps)."""
        return {name: c.tolist() for name, c in self._counts.items()}
