"""Alarms: model drift and flow health, each a metric and a record on the ``alarms`` topic.

One mechanism for every alarm. A check produces a value and a threshold; an
:class:`AlarmBoard` turns the checks of one subject into *transitions*: an
:class:`Alarm` record ``firing`` when it first goes over, ``resolved`` when it
comes back, nothing in between, and ``sluice_alarm_active`` follows the state.
The records go to Kafka with the flow's other output.

* :func:`drift_alarms`: the PSI (:mod:`state.drift`) of each model's score
  distribution and of its watched input features, per tumbling window
  (default 5 minutes, processing time), against the reference saved with the
  model. A model's first judged window is a warm-up (exported, not alarmed on):
  a flow that starts from nothing has empty windowed state, so its first
  minutes do not look like the training data (the fraud flow's first window:
  PSI 0.18 against a 0.2 threshold, 0.02 after). Input: :class:`ScoreSample` s, one per model call (see
  :mod:`operators.taps` for taking them out of a micro-batched model).
* :func:`health_alarms`: from :class:`HealthSnapshot` s of each process
  (:func:`health_snapshots` takes one per second from the process's own
  metrics): input lag growing for ``lag_growing_s``, the dead-letter rate, the
  feature-store fallback rate, and SLO burn (the share of events over the
  latency target at the SLO stage), each over the last ``window_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import bytewax.operators as op
import numpy as np
import orjson
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from operators.clock import Clock, utc_now
from operators.kafka.records import ID_HEADER, KafkaRecord
from operators.metrics import (
    ALARM_ACTIVE,
    ALARMS_FIRED,
    DEAD_LETTERS,
    DRIFT_PSI,
    PROCESS,
    SOURCE_LAG_RECORDS,
    SOURCE_RECORDS,
    STAGE_AGE,
)
from state.drift import SCORE, DriftCounts, ModelReference
from state.feature_store import FeatureStore

log = logging.getLogger(__name__)

FIRING = "firing"
RESOLVED = "resolved"


@dataclass(frozen=True)
class Alarm:
    """One alarm transition (the value of an ``alarms`` record)."""

    alarm: str  # score_drift, feature_drift, lag_growing, dlq_rate, store_fallback, slo_burn
    subject: str  # what it is about: model@version:feature, process, ...
    state: str  # firing | resolved
    value: float
    threshold: float
    flow: str
    at_ms: float
    detail: dict[str, Any] = field(default_factory=dict)

    def to_record(self, topic: str) -> KafkaRecord:
        """The ``alarms`` record: keyed by alarm and subject, with an id for exactly-once output."""
        body = {
            "alarm": self.alarm,
            "subject": self.subject,
            "state": self.state,
            "value": round(self.value, 6),
            "threshold": self.threshold,
            "flow": self.flow,
            "at": self.at_ms,
            **self.detail,
        }
        key = f"{self.alarm}/{self.subject}"
        ident = f"alarm/{self.flow}/{key}/{self.state}/{int(self.at_ms)}".encode()
        return KafkaRecord(topic, key.encode(), orjson.dumps(body), [(ID_HEADER, ident)])


class AlarmBoard:
    """Which alarms are firing; each check becomes a transition or nothing.

    >>> board = AlarmBoard("fraud")
    >>> board.check("dlq_rate", "p0", 0.5, 0.1, over=True, at_ms=1.0).state
    'firing'
    >>> board.check("dlq_rate", "p0", 0.6, 0.1, over=True, at_ms=2.0) is None   # still firing: no new record
    True
    >>> board.check("dlq_rate", "p0", 0.0, 0.1, over=False, at_ms=3.0).state
    'resolved'
    """

    def __init__(self, flow: str, active: list[tuple[str, str]] | None = None) -> None:
        self.flow = flow
        self.active: set[tuple[str, str]] = set(active or ())

    def check(
        self,
        alarm: str,
        subject: str,
        value: float,
        threshold: float,
        *,
        over: bool | None = None,
        at_ms: float | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Alarm | None:
        """Record one check (``over`` defaults to ``value > threshold``); the transition it causes, if any."""
        over = value > threshold if over is None else over
        key = (alarm, subject)
        if PROCESS.on:
            ALARM_ACTIVE.set(key, 1.0 if over else 0.0)
        if over == (key in self.active):
            return None
        if over:
            self.active.add(key)
            if PROCESS.on:
                ALARMS_FIRED.add((alarm,))
        else:
            self.active.discard(key)
        at = time.time() * 1000.0 if at_ms is None else at_ms
        return Alarm(alarm, subject, FIRING if over else RESOLVED, value, threshold, self.flow, at, detail or {})

    def state(self) -> list[tuple[str, str]]:
        return sorted(self.active)


# --- drift -------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreSample:
    """One model call's scores (and, when features are watched, its feature rows)."""

    model: str
    version: str
    scores: np.ndarray
    rows: np.ndarray | None = None

    @property
    def key(self) -> str:
        return f"{self.model}@{self.version}"


References = Callable[[str, str], ModelReference | None]  # (model, version) -> its training reference, if any


class _DriftLogic(StatefulBatchLogic[ScoreSample, Alarm, dict[str, Any]]):
    def __init__(
        self,
        references: References,
        settings: DriftSettings,
        flow: str,
        resume: dict[str, Any] | None,
        now_getter: Clock,
    ) -> None:
        self.references = references
        self.settings = settings
        self.now = now_getter
        self.board = AlarmBoard(flow, resume["active"] if resume else None)
        self.window_end: datetime = resume["window_end"] if resume else now_getter() + settings.window
        self.model: tuple[str, str] | None = resume["model"] if resume else None
        self.counts: DriftCounts | None = None
        # Snapshots from before the warm-up existed belong to flows that are well past it.
        self.judged: int = resume.get("judged", settings.warmup_windows) if resume else 0
        self.quiet: int = resume.get("quiet", 0) if resume else 0  # windows in a row with too few scores
        if self.model is not None:
            ref = references(*self.model)
            if ref is not None:
                self.counts = DriftCounts(ref, resume["counts"] if resume else None)

    def on_batch(self, values: list[ScoreSample]) -> tuple[list[Alarm], bool]:
        out = self._close_if_due()
        for sample in values:
            if self.model is None:
                self.model = (sample.model, sample.version)
                ref = self.references(sample.model, sample.version)
                if ref is None:
                    log.warning("no drift reference for %s: its drift is not watched", sample.key)
                else:
                    self.counts = DriftCounts(ref)
            if self.counts is not None:
                self.counts.add(sample.scores, sample.rows)
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[Alarm], bool]:
        out = self._close_if_due()
        gone = self.quiet >= self.settings.forget_after_windows  # a replaced version: its alarms resolved above
        return out, StatefulBatchLogic.DISCARD if gone else StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Alarm], bool]:
        """The input ends: judge the window it was in. Kept: a graceful stop also ends the input, and the
        flow resumes with its alarms and warm-up where they were."""
        return self._close_if_due(force=True), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return self.window_end if self.counts is not None else None

    def _close_if_due(self, force: bool = False) -> list[Alarm]:
        now = self.now()
        if (now < self.window_end and not force) or self.counts is None or self.model is None:
            return []
        while self.window_end <= now:
            self.window_end += self.settings.window
        counts, self.counts = self.counts, DriftCounts(self.counts.reference)
        model, version = self.model
        at_ms = now.timestamp() * 1000.0
        if counts.count < self.settings.min_count:  # too few scores to say anything; the next window starts empty
            self.quiet += 1
            return self._resolve_all(at_ms) if self.quiet >= self.settings.forget_after_windows else []
        self.quiet = 0
        warming_up = self.judged < self.settings.warmup_windows
        self.judged += 1
        out = []
        for series, value in sorted(counts.psi().items()):
            if PROCESS.on:
                DRIFT_PSI.set((model, version, series), value)
            if warming_up:
                continue
            alarm = "score_drift" if series == SCORE else "feature_drift"
            detail = {"model": model, "version": version, "series": series, "count": counts.count}
            detail["window_s"] = self.settings.window.total_seconds()
            found = self.board.check(alarm, f"{model}@{version}:{series}", value, self.settings.threshold,
                                     at_ms=at_ms, detail=detail)  # fmt: skip
            if found is not None:
                out.append(found)
        return out

    def _resolve_all(self, at_ms: float) -> list[Alarm]:
        """The model is no longer scored (a version replaced by another): nothing it fired stays firing."""
        why = f"fewer than {self.settings.min_count} scores in {self.quiet} windows: no longer judged"
        return [
            alarm
            for name, subject in self.board.state()
            if (
                alarm := self.board.check(
                    name, subject, 0.0, self.settings.threshold, over=False, at_ms=at_ms, detail={"reason": why}
                )
            )
            is not None  # fmt: skip
        ]

    def snapshot(self) -> dict[str, Any]:
        return {
            "quiet": self.quiet,
            "active": self.board.state(),
            "window_end": self.window_end,
            "model": self.model,
            "counts": self.counts.state() if self.counts else None,
            "judged": self.judged,
        }


@dataclass(frozen=True)
class DriftSettings:
    """When drift is an alarm: PSI over ``threshold`` in a window of ``window`` with at least ``min_count`` scores,
    after a model's first ``warmup_windows`` such windows. After ``forget_after_windows`` windows in a row
    with fewer scores (the version was replaced), its alarms resolve and its state is dropped."""

    threshold: float = 0.2
    window: timedelta = timedelta(minutes=5)
    min_count: int = 500
    warmup_windows: int = 1
    forget_after_windows: int = 3


@operator
def drift_alarms(
    step_id: str,
    samples: Stream[ScoreSample],
    references: References,
    settings: DriftSettings = DriftSettings(),
    flow: str = "",
    now_getter: Clock = utc_now,
) -> Stream[Alarm]:
    """PSI of each model's scores (and watched features) per window against ``references(model, version)``;
    an :class:`Alarm` when one goes over ``settings.threshold`` and when it comes back.

    Samples are keyed by model and version, so one worker holds each model's
    window whatever the number of processes. A model without a reference is not
    watched (logged once).
    """

    def builder(resume: dict[str, Any] | None) -> _DriftLogic:
        return _DriftLogic(references, settings, flow or PROCESS.flow, resume, now_getter)

    keyed = op.key_on("by_model", samples, lambda s: s.key)
    return op.map("alarm", op.stateful_batch("window", keyed, builder), lambda kv: kv[1])


# --- health ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthSnapshot:
    """Cumulative counts of one process at one moment: what the health rules compare over time."""

    process: str
    at: float  # epoch seconds
    lag_records: float
    input_records: int
    dead_letters: int
    lookups: int
    fallbacks: int
    slo_events: int
    slo_over: int


def take_snapshot(slo_stage: str | None, slo_ms: float, now: float | None = None) -> HealthSnapshot:
    """This process's numbers now, read from its metrics."""
    lookups = fallbacks = 0
    for store in FeatureStore.live():
        lookups += store.hits + store.misses + store.down
        fallbacks += store.down
    events = over = 0
    if slo_stage:
        age = STAGE_AGE.value((slo_stage,))
        events, over = age.count, round(age.share_above(slo_ms) * age.count)
    return HealthSnapshot(
        process=f"{PROCESS.flow}/{PROCESS.process}",
        at=time.time() if now is None else now,
        lag_records=sum(SOURCE_LAG_RECORDS.values().values()),
        input_records=sum(SOURCE_RECORDS.values().values()),
        dead_letters=sum(DEAD_LETTERS.values().values()),
        lookups=lookups,
        fallbacks=fallbacks,
        slo_events=events,
        slo_over=over,
    )


class _Every:
    """At most one ``True`` per ``seconds`` for the whole process (any worker thread may ask)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._next = 0.0
        self._lock = threading.Lock()

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        with self._lock:
            if now < self._next:
                return False
            self._next = now + self.seconds
            return True


@operator
def health_snapshots(
    step_id: str,
    carrier: Stream[Any],
    slo_stage: str | None = None,
    slo_ms: float = 35.0,
    every: timedelta = timedelta(seconds=1),
) -> Stream[HealthSnapshot]:
    """One :class:`HealthSnapshot` of this process at most every ``every``, taken when a batch of ``carrier``
    (typically the input records) passes; nothing while metrics are off."""
    clock = _Every(every.total_seconds())

    def snap(_batch: list[Any]) -> list[HealthSnapshot]:
        if not PROCESS.on or not clock.due():
            return []
        return [take_snapshot(slo_stage, slo_ms)]

    return op.flat_map_batch("snapshot", carrier, snap)


@dataclass(frozen=True)
class HealthRules:
    """Thresholds of the health alarms (each over the last ``window_s`` of snapshots)."""

    lag_growing_s: float = 30.0
    min_lag_records: int = 1000
    dlq_rate: float = 0.01
    fallback_rate: float = 0.05
    slo_burn: float = 0.01
    window_s: float = 10.0
    min_events: int = 100


def check_health(history: list[HealthSnapshot], rules: HealthRules) -> list[tuple[str, float, float, bool]]:
    """``(alarm, value, threshold, over)`` for each rule that has enough data in ``history`` (oldest first).

    >>> s = lambda t, lag, inp, dead: HealthSnapshot("f/0", t, lag, inp, dead, 0, 0, 0, 0)
    >>> rules = HealthRules(lag_growing_s=4, min_lag_records=10, window_s=4, min_events=10)
    >>> [(a, over) for a, v, th, over in check_health([s(0, 5, 0, 0), s(2, 50, 100, 0), s(4, 90, 200, 10)], rules)]
    [('lag_growing', True), ('dlq_rate', True)]
    """
    if len(history) < 2:
        return []
    now = history[-1]
    out: list[tuple[str, float, float, bool]] = []

    def at_or_before(t: float) -> HealthSnapshot | None:
        found = None
        for snap in history:
            if snap.at <= t:
                found = snap
        return found

    start, middle = at_or_before(now.at - rules.lag_growing_s), at_or_before(now.at - rules.lag_growing_s / 2)
    if start is not None and middle is not None:
        growing = start.lag_records < middle.lag_records < now.lag_records and now.lag_records >= rules.min_lag_records
        out.append(("lag_growing", now.lag_records, rules.lag_growing_s, growing))
    base = at_or_before(now.at - rules.window_s)
    if base is None:
        return out

    def rate(name: str, part: int, whole: int, threshold: float) -> None:
        if whole >= rules.min_events:
            value = part / whole
            out.append((name, value, threshold, value > threshold))

    rate("dlq_rate", now.dead_letters - base.dead_letters, now.input_records - base.input_records, rules.dlq_rate)
    rate("store_fallback", now.fallbacks - base.fallbacks, now.lookups - base.lookups, rules.fallback_rate)
    rate("slo_burn", now.slo_over - base.slo_over, now.slo_events - base.slo_events, rules.slo_burn)
    return out


class _HealthLogic(StatefulBatchLogic[HealthSnapshot, Alarm, dict[str, Any]]):
    def __init__(self, rules: HealthRules, flow: str, resume: dict[str, Any] | None) -> None:
        self.rules = rules
        self.board = AlarmBoard(flow, resume["active"] if resume else None)
        self.history: deque[HealthSnapshot] = deque(resume["history"] if resume else ())

    def on_batch(self, values: list[HealthSnapshot]) -> tuple[list[Alarm], bool]:
        out = []
        keep_s = max(self.rules.lag_growing_s, self.rules.window_s) + 5.0
        for snap in values:
            if self.history and snap.at <= self.history[-1].at:
                continue  # a replayed or reordered snapshot
            self.history.append(snap)
            while self.history and self.history[0].at < snap.at - keep_s:
                self.history.popleft()
            for alarm, value, threshold, over in check_health(list(self.history), self.rules):
                detail = {"window_s": self.rules.window_s} if alarm != "lag_growing" else {}
                found = self.board.check(alarm, snap.process, value, threshold, over=over, at_ms=snap.at * 1000.0,
                                         detail=detail)  # fmt: skip
                if found is not None:
                    out.append(found)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> dict[str, Any]:
        return {"active": self.board.state(), "history": list(self.history)}


@operator
def health_alarms(
    step_id: str, snapshots: Stream[HealthSnapshot], rules: HealthRules = HealthRules(), flow: str = ""
) -> Stream[Alarm]:
    """Health alarms of every process from its snapshots (see the module docstring)."""

    def builder(resume: dict[str, Any] | None) -> _HealthLogic:
        return _HealthLogic(rules, flow or PROCESS.flow, resume)

    keyed = op.key_on("by_process", snapshots, lambda s: s.process)
    return op.map("alarm", op.stateful_batch("rules", keyed, builder), lambda kv: kv[1])
