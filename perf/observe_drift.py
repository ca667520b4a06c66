"""Drift alarms, offline and deterministic: a shifted stream must fire, the normal one must not.

    python -m perf.observe_drift [--events 40000] [--model models/artifacts/fraud]

The served fraud model scores three seeded synthetic streams, with window
features from the flow's own window core and the cards' profiles (what the flow
computes, without Kafka): a held-out normal stream (its scores and top features
are the model's reference, as training saves it), a second normal stream, and
the same stream with the generator's shift switch on (amounts x3, 30% of events
abroad: ``sluice produce transactions --shift-amounts 3 --shift-foreign 0.3``).
Each stream goes through the real drift operator (:func:`operators.alarms.drift_alarms`,
5-minute windows on a test clock: every batch of 512 events is 30 s later).

Writes ``perf/reports/observe_drift.json`` (PSI of every window and series, the
alarms) and ``observe.drift_alarm_fired_on_shift`` / ``observe.drift_alarm_fired_on_normal``
(1/0) in ``summary.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, TimeTestingGetter, run_main

from models.fraud_features import FEATURE_NAMES, feature_rows, parse_profile
from models.fraud_model import FraudCascade, load_cascade, model_name
from models.registry import ModelRegistry
from models.synthetic_transactions import Shift, TransactionStream
from models.transaction import Transaction
from operators.alarms import Alarm, DriftSettings, ScoreSample, drift_alarms
from perf.summary import REPORTS, record
from state.drift import DriftCounts, ModelReference
from state.windows import SlidingAggregates, WindowSpec

WATCHED = ("log_amount", "log_amount_vs_usual", "foreign", "high_risk_country")
SHIFT = Shift(amount_scale=3.0, foreign_share=0.3)
BATCH = 512
BATCH_EVERY = timedelta(seconds=30)


def scored_batches(
    scorer: FraudCascade, seed: int, events: int, shift: Shift | None = None, n_cards: int = 5000
) -> Iterator[ScoreSample]:
    """The stream's events scored as the flow scores them, ``BATCH`` at a time."""
    stream = TransactionStream(seed, n_cards=n_cards, shift=shift)
    profiles = {c.card_id: parse_profile({k: str(v) for k, v in c.profile().items()}) for c in stream.cards}
    windows: dict[str, SlidingAggregates] = {}
    spec = WindowSpec()
    txns: list[Transaction] = []
    feats_of: list[tuple[float, ...]] = []
    for txn, _ in itertools.islice(stream, events):
        agg = windows.get(txn.card_id)
        if agg is None:
            agg = windows[txn.card_id] = SlidingAggregates(spec)
        feats = agg.add(txn.event_time_s, txn.amount, txn.merchant_id) or agg.peek(
            txn.event_time_s, txn.amount, txn.merchant_id
        )
        txns.append(txn)
        feats_of.append(feats)
        if len(txns) == BATCH:
            matrix = feature_rows(txns, feats_of, [profiles[t.card_id] for t in txns])
            yield ScoreSample(model_name(scorer.stage1_kind), scorer.version, scorer.stage1(matrix), matrix)
            txns, feats_of = [], []


def reference_of(scorer: FraudCascade, seed: int, events: int) -> ModelReference:
    """The model's reference from a held-out normal stream (what training writes next to the weights)."""
    samples = list(scored_batches(scorer, seed, events))
    scores = np.concatenate([s.scores for s in samples])
    rows = np.concatenate([s.rows for s in samples if s.rows is not None])
    return ModelReference.build(model_name(scorer.stage1_kind), scores, rows, FEATURE_NAMES, WATCHED)


@dataclass
class DriftRun:
    alarms: list[Alarm]
    window_psi: list[dict[str, float]]  # every window's PSI by series, computed with the same core

    @property
    def fired(self) -> bool:
        return any(a.state == "firing" for a in self.alarms)


def run_drift(samples: list[ScoreSample], reference: ModelReference, settings: DriftSettings) -> DriftRun:
    """``samples`` through the drift operator, each ``BATCH_EVERY`` after the previous on a test clock."""
    clock = TimeTestingGetter(datetime(2026, 1, 1, tzinfo=UTC))

    def tick(sample: ScoreSample) -> ScoreSample:
        clock.advance(BATCH_EVERY)
        return sample

    flow = Dataflow("drift_check")
    ticked = op.map("tick", op.input("samples", flow, TestingSource(samples)), tick)
    alarms: list[Alarm] = []
    op.output(
        "out", drift_alarms("drift", ticked, lambda m, v: reference, settings, "fraud", clock.get), TestingSink(alarms)
    )
    run_main(flow)
    per_window = int(settings.window / BATCH_EVERY)
    psis = []
    for i in range(0, len(samples), per_window):
        counts = DriftCounts(reference)
        for s in samples[i : i + per_window]:
            counts.add(s.scores, s.rows)
        if counts.count >= settings.min_count:
            psis.append({k: round(v, 4) for k, v in counts.psi().items()})
    return DriftRun(alarms, psis)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=40_000, help="events per stream")
    parser.add_argument("--model", default="models/artifacts/fraud", help="the fraud model artifact folder")
    parser.add_argument("--no-record", action="store_true", help="do not write summary.json (smoke runs)")
    args = parser.parse_args(argv)
    from models.train_fraud import ensure_trained

    ensure_trained(args.model)
    started = time.time()
    registry = ModelRegistry(args.model)
    scorer = load_cascade(registry.folder(registry.served() or ""), "cpu")
    reference = reference_of(scorer, seed=101, events=args.events)
    settings = DriftSettings()
    normal = run_drift(list(scored_batches(scorer, 202, args.events)), reference, settings)
    shifted = run_drift(list(scored_batches(scorer, 202, args.events, SHIFT)), reference, settings)
    report = {
        "benchmark": "observe_drift",
        "command": "python -m perf.observe_drift " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "model": scorer.version,
        "events_per_stream": args.events,
        "threshold_psi": settings.threshold,
        "window_s": settings.window.total_seconds(),
        "shift": {"amount_scale": SHIFT.amount_scale, "foreign_share": SHIFT.foreign_share},
        "normal": {
            "fired": normal.fired,
            "window_psi": normal.window_psi,
            "alarms": [a.__dict__ for a in normal.alarms],
        },
        "shifted": {
            "fired": shifted.fired,
            "window_psi": shifted.window_psi,
            "alarms": [a.__dict__ for a in shifted.alarms],
        },
        "seconds": round(time.time() - started, 1),
    }
    (REPORTS / "observe_drift.json").write_text(json.dumps(report, indent=1, default=str))
    top = lambda run: max((max(w.values()) for w in run.window_psi), default=0.0)  # noqa: E731
    print(f"normal stream:  max PSI {top(normal):.3f}, alarm fired: {normal.fired}")
    print(f"shifted stream: max PSI {top(shifted):.3f}, alarm fired: {shifted.fired} "
          f"({', '.join(sorted({a.subject for a in shifted.alarms}))})")  # fmt: skip
    if not args.no_record:
        record("observe", {"drift_alarm_fired_on_shift": shifted.fired, "drift_alarm_fired_on_normal": normal.fired})
    return 0


if __name__ == "__main__":
    sys.exit(main())
