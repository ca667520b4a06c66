"""The fraud flow's feature log and the late labels joined to it: training data with no training/serving skew.

For every decision the flow writes one ``fraud-features`` record keyed by event
id: the exact feature row stage 1 scored (float32, as the model saw it), the
recent-event sequence stage 2 scored when the event was escalated, whether a
rule fired, the model version and the scores. Retraining from this log uses the
served values themselves, so a change in how features are computed can never
make the training data differ from what was served.

Labels arrive later: chargebacks (``fraud-labels``, each with the time it was
reported) and people's final decisions on reviewed cases (``final-decisions``).
:class:`LabelBook` joins them to logged events *as of* a point in time: a
chargeback or verdict counts only if it was known by then, and an event without
either counts as legitimate only once its maturity period has passed (a
chargeback could still come); younger events are left out rather than guessed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import orjson

from models.fraud_features import N_FEATURES, SEQUENCE_FEATURES, SEQUENCE_LENGTH
from models.train_fraud import Dataset
from models.wire import InvalidEvent, json_object


@dataclass(frozen=True, slots=True)
class LoggedFeatures:
    """One logged decision's inputs."""

    event_id: str
    model_version: str
    event_time_ms: int
    row: np.ndarray  # (N_FEATURES,) float32
    sequence: np.ndarray | None  # (SEQUENCE_LENGTH, len(SEQUENCE_FEATURES)) float32, escalated events only
    rules_fired: bool


def feature_log_body(
    event_id: str,
    card_id: str,
    model_version: str,
    event_time_ms: int,
    row: np.ndarray,
    sequence: np.ndarray | None,
    rules: list[str],
    scores: dict[str, float],
) -> bytes:
    """The ``fraud-features`` record for one decision (float32 values written exactly: they read back equal).

    >>> body = feature_log_body("e1", "c1", "v1", 1, np.arange(N_FEATURES, dtype=np.float32) / 3, None, [], {})
    >>> logged = parse_feature_log(body)
    >>> bool((logged.row == np.arange(N_FEATURES, dtype=np.float32) / 3).all()), logged.sequence
    (True, None)
    """
    out: dict[str, object] = {
        "event_id": event_id,
        "card_id": card_id,
        "model_version": model_version,
        "event_time": event_time_ms,
        "row": row.astype(np.float32, copy=False),
        "rules": rules,
        "scores": scores,
    }
    if sequence is not None:
        out["sequence"] = sequence.astype(np.float32, copy=False)
    return orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY)


def parse_feature_log(raw: bytes | None) -> LoggedFeatures:
    obj = json_object(raw)
    row = np.asarray(obj.get("row"), dtype=np.float32)
    if row.shape != (N_FEATURES,):
        raise InvalidEvent(f"feature row has shape {row.shape}, this code computes {N_FEATURES} features")
    seq = obj.get("sequence")
    sequence = None if seq is None else np.asarray(seq, dtype=np.float32)
    if sequence is not None and sequence.shape != (SEQUENCE_LENGTH, len(SEQUENCE_FEATURES)):
        raise InvalidEvent(f"sequence has shape {sequence.shape}")
    return LoggedFeatures(
        event_id=str(obj["event_id"]),
        model_version=str(obj.get("model_version", "")),
        event_time_ms=int(obj["event_time"]),
        row=row,
        sequence=sequence,
        rules_fired=bool(obj.get("rules")),
    )


@dataclass
class LabelBook:
    """Chargebacks and people's verdicts by event id, each with the time it became known."""

    chargebacks: dict[str, int] = field(default_factory=dict)  # event id -> reported at (ms)
    verdicts: dict[str, tuple[bool, int]] = field(default_factory=dict)  # event id -> (fraud?, decided at ms)

    def add_chargeback(self, raw: bytes | None) -> None:
        """A ``fraud-labels`` record: ``{"event_id", "fraud": true, "reported_at"?}``."""
        obj = json_object(raw)
        if obj.get("fraud") is True:
            self.chargebacks[str(obj["event_id"])] = int(obj.get("reported_at", 0))

    def add_verdict(self, raw: bytes | None) -> None:
        """A ``final-decisions`` record from the review flow: a person's ``approve`` or ``decline``.

        Only cases people closed (``by`` ``chain``) are labels: a case closed by an expired SLA took
        its chain's default action, which no one judged.

        >>> book = LabelBook()
        >>> book.add_verdict(b'{"event_id": "a", "decision": "decline", "by": "chain", "decided_at": 5}')
        >>> book.add_verdict(b'{"event_id": "b", "decision": "decline", "by": "sla_default", "decided_at": 5}')
        >>> book.verdicts
        {'a': (True, 5)}
        """
        obj = json_object(raw)
        decision = obj.get("decision")
        if decision in ("approve", "decline") and "event_id" in obj and obj.get("by") == "chain":
            self.verdicts[str(obj["event_id"])] = (decision == "decline", int(obj.get("decided_at", 0)))

    def known_until(self) -> int | None:
        """When the newest chargeback was reported: the chargeback stream, the slow one, is complete up to
        about here (the default "as of" of a training run, on the events' clock)."""
        return max(self.chargebacks.values(), default=None)

    def label(self, event_id: str, event_time_ms: int, as_of_ms: int, maturity_ms: int) -> float | None:
        """1.0 fraud, 0.0 legitimate, ``None`` not known yet as of ``as_of_ms``.

        >>> book = LabelBook({"a": 5_000}, {"b": (False, 2_000)})
        >>> [book.label(e, 0, as_of_ms=4_000, maturity_ms=10_000) for e in "abc"]
        [None, 0.0, None]
        >>> [book.label(e, 0, as_of_ms=20_000, maturity_ms=10_000) for e in "abc"]
        [1.0, 0.0, 0.0]
        """
        reported = self.chargebacks.get(event_id)
        if reported is not None and reported <= as_of_ms:
            return 1.0
        verdict = self.verdicts.get(event_id)
        if verdict is not None and verdict[1] <= as_of_ms:
            return 1.0 if verdict[0] else 0.0
        if event_time_ms + maturity_ms <= as_of_ms:
            return 0.0
        return None


def join_labels(logged: Iterable[LoggedFeatures], book: LabelBook, as_of_ms: int, maturity_ms: int) -> Dataset:
    """The training set of the logged events whose label is known as of ``as_of_ms``, in event-time order
    (a replayed event logged twice counts once)."""
    seen: set[str] = set()
    kept: list[tuple[LoggedFeatures, float]] = []
    for item in logged:
        if item.event_id in seen:
            continue
        seen.add(item.event_id)
        label = book.label(item.event_id, item.event_time_ms, as_of_ms, maturity_ms)
        if label is not None:
            kept.append((item, label))
    kept.sort(key=lambda il: il[0].event_time_ms)
    empty_seq = np.zeros((SEQUENCE_LENGTH, len(SEQUENCE_FEATURES)), dtype=np.float32)
    return Dataset(
        rows=np.stack([i.row for i, _ in kept]) if kept else np.zeros((0, N_FEATURES), dtype=np.float32),
        sequences=np.stack([empty_seq if i.sequence is None else i.sequence for i, _ in kept])
        if kept
        else np.zeros((0, SEQUENCE_LENGTH, len(SEQUENCE_FEATURES)), dtype=np.float32),
        has_sequence=np.array([i.sequence is not None for i, _ in kept], dtype=bool),
        rules_fired=np.array([i.rules_fired for i, _ in kept], dtype=bool),
        labels=np.array([label for _, label in kept], dtype=np.float32),
        event_times_ms=np.array([i.event_time_ms for i, _ in kept], dtype=np.int64),
    )
