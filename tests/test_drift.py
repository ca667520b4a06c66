"""Drift and health alarms: the PSI core (properties), the drift operator on the real fraud scorer with a
shifted and an unshifted stream, and the health rules on snapshot series."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import numpy as np
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from models.fraud_model import load_cascade, model_name
from models.registry import ModelRegistry
from operators.alarms import (
    Alarm,
    DriftSettings,
    HealthRules,
    HealthSnapshot,
    ScoreSample,
    _DriftLogic,
    _HealthLogic,
    check_health,
    health_alarms,
)
from perf.observe_drift import SHIFT, reference_of, run_drift, scored_batches
from state.drift import DriftCounts, ModelReference, Reference, cut_points, psi

counts = st.lists(st.integers(min_value=0, max_value=1000), min_size=2, max_size=12).filter(lambda c: sum(c) > 0)


@given(counts)
def test_psi_of_a_distribution_with_itself_is_zero(c):
    assert psi(c, c) == pytest.approx(0.0, abs=1e-12)


@given(st.integers(min_value=2, max_value=12).flatmap(lambda n: st.tuples(*(st.lists(
    st.integers(min_value=0, max_value=1000), min_size=n, max_size=n).filter(lambda c: sum(c) > 0) for _ in range(2)))))  # fmt: skip
def test_psi_is_non_negative_symmetric_and_ignores_scale(pair):
    a, b = pair
    assert psi(a, b) >= 0.0
    assert psi(a, b) == pytest.approx(psi(b, a), rel=1e-9, abs=1e-12)
    assert psi([3 * x for x in a], b) == pytest.approx(psi(a, b), rel=1e-9, abs=1e-12)


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=400), st.integers(2, 20))
@settings(max_examples=60)
def test_a_reference_bins_its_own_sample_into_its_proportions(values, bins):
    ref = Reference.from_values(values, bins)
    assert sum(ref.proportions) == pytest.approx(1.0)
    got = ref.counts(np.asarray(values))
    assert int(got.sum()) == len(values)
    assert np.allclose(got / got.sum(), ref.proportions)
    assert ref.psi(got) == pytest.approx(0.0, abs=1e-9)


def test_a_model_reference_round_trips_through_its_file(tmp_path: Path):
    rows = np.random.default_rng(1).normal(size=(1000, 3))
    ref = ModelReference.build("m", rows[:, 1], rows, ["a", "b", "c"], top=["c"])
    ref.save(tmp_path)
    assert ModelReference.load(tmp_path) == ref


@pytest.fixture(scope="module")
def scorer(model_dir: Path):
    return load_cascade(ModelRegistry(model_dir).folder(ModelRegistry(model_dir).served() or ""), "cpu")


def test_a_shifted_stream_fires_drift_alarms_and_the_normal_stream_does_not(scorer):
    """The real fraud scorer on the generator's streams: a held-out normal stream is the reference; another
    normal stream stays under the threshold in every 5-minute window; the same stream with amounts x3 and
    30% of events abroad fires (scores and the amount and country features), as alarm records."""
    reference = reference_of(scorer, seed=101, events=12_000)
    settings = DriftSettings(threshold=0.2, window=timedelta(minutes=5), min_count=500)
    normal = run_drift(list(scored_batches(scorer, 202, 12_000)), reference, settings)
    shifted = run_drift(list(scored_batches(scorer, 202, 12_000, SHIFT)), reference, settings)

    assert len(normal.window_psi) >= 2 and not normal.alarms
    assert all(v < settings.threshold for w in normal.window_psi for v in w.values()), normal.window_psi
    firing = {a.subject.rsplit(":", 1)[1]: a for a in shifted.alarms if a.state == "firing"}
    assert {"score", "log_amount", "foreign"} <= set(firing), shifted.alarms
    assert firing["score"].alarm == "score_drift" and firing["log_amount"].alarm == "feature_drift"
    assert all(a.value > settings.threshold for a in firing.values())
    body = orjson.loads(firing["score"].to_record("alarms").value or b"{}")
    assert (
        body["state"] == "firing"
        and body["model"] == model_name(scorer.stage1_kind)
        and body["version"] == scorer.version
    )


def test_drift_that_goes_away_is_resolved_once(scorer):
    reference = reference_of(scorer, seed=101, events=8_000)
    settings = DriftSettings(threshold=0.2, window=timedelta(minutes=2), min_count=500)
    normal = list(scored_batches(scorer, 303, 4_096))
    shifted = list(scored_batches(scorer, 303, 4_096, SHIFT))
    run = run_drift(normal + shifted + shifted + normal + normal, reference, settings)
    score = [a.state for a in run.alarms if a.subject.endswith(":score")]
    assert score == ["firing", "resolved"]


def test_a_models_first_window_is_a_warm_up_that_raises_no_alarm(scorer):
    """A flow that starts from nothing has every card's history empty in its first window. That window's
    PSI is exported but not alarmed on: a stream shifted from its first event fires one window later than
    it would without the warm-up, and in the same place as when the first window is normal."""
    reference = reference_of(scorer, seed=101, events=8_000)
    settings = DriftSettings(threshold=0.2, window=timedelta(minutes=2), min_count=500)
    shifted = list(scored_batches(scorer, 303, 8_192, SHIFT))

    def first_firing(run_settings: DriftSettings) -> float:
        return min(a.at_ms for a in run_drift(shifted, reference, run_settings).alarms if a.state == "firing")

    without = first_firing(replace(settings, warmup_windows=0))
    assert first_firing(settings) - without == settings.window.total_seconds() * 1000.0


def test_the_alarms_of_a_replaced_version_resolve_once_it_is_no_longer_scored(scorer):
    """A shifted stream fires on v1; then v2 serves (the same stream, normal again). v1 gets no scores: after
    three windows without enough to judge, its alarms resolve, saying why, instead of firing for ever."""
    reference = reference_of(scorer, seed=101, events=8_000)
    settings = DriftSettings(threshold=0.2, window=timedelta(minutes=2), min_count=500, warmup_windows=0)
    v1 = list(scored_batches(scorer, 303, 4_096, SHIFT))
    v2 = [replace(s, version="v2") for s in scored_batches(scorer, 404, 12_288)]
    run = run_drift(v1 + v2, reference, settings)
    old = [a for a in run.alarms if f"@{scorer.version}:" in a.subject]
    fired = {a.subject for a in old if a.state == "firing"}
    resolved = {a.subject: a for a in old if a.state == "resolved"}
    assert fired and set(resolved) == fired, old
    assert all("no longer judged" in a.detail["reason"] for a in resolved.values())
    assert not [a for a in run.alarms if a.subject.startswith("v2") or "@v2:" in a.subject]


def _snapshots(points: Sequence[tuple[float, float, int, int, int, int]]) -> list[HealthSnapshot]:
    """(time, lag, input, dead letters, lookups, fallbacks) -> snapshots of process fraud/0."""
    return [HealthSnapshot("fraud/0", t, lag, inp, dead, look, fall, 0, 0) for t, lag, inp, dead, look, fall in points]


def _health(snaps: list[HealthSnapshot], rules: HealthRules) -> list[Alarm]:
    flow = Dataflow("health_check")
    out: list[Alarm] = []
    op.output(
        "out", health_alarms("health", op.input("in", flow, TestingSource(snaps)), rules, "fraud"), TestingSink(out)
    )
    run_main(flow)
    return out


def test_health_alarms_fire_on_growing_lag_and_dead_letters_and_resolve():
    rules = HealthRules(lag_growing_s=6, min_lag_records=100, dlq_rate=0.05, window_s=4, min_events=50)
    healthy = [(t, 0.0, 1000 * t, t, 100 * t, 0) for t in range(0, 10)]
    lagging = [(t, 50.0 * (t - 9), 1000 * t, 9 + 200 * (t - 9), 100 * t, 0) for t in range(10, 20)]
    recovered = [(t, 0.0, 1000 * t, 1809, 100 * t, 0) for t in range(20, 30)]
    alarms = _health(_snapshots(healthy + lagging + recovered), rules)
    got = [(a.alarm, a.state) for a in alarms]
    assert got.count(("lag_growing", "firing")) == 1 and got.count(("lag_growing", "resolved")) == 1
    assert got.count(("dlq_rate", "firing")) == 1 and got.count(("dlq_rate", "resolved")) == 1
    assert not [a for a in alarms if a.alarm in ("store_fallback", "slo_burn")]
    fired = next(a for a in alarms if a.alarm == "dlq_rate" and a.state == "firing")
    assert fired.value > rules.dlq_rate and fired.subject == "fraud/0"


def test_a_healthy_process_raises_no_alarm():
    rules = HealthRules(lag_growing_s=6, min_lag_records=100, window_s=4, min_events=50)
    steady = [(t, 20.0 + (t % 3), 1000 * t, t // 5, 100 * t, t // 10) for t in range(0, 60)]
    assert _health(_snapshots(steady), rules) == []


def test_feature_store_fallbacks_fire_their_own_alarm():
    rules = HealthRules(fallback_rate=0.05, window_s=4, min_events=50)
    points = [(t, 0.0, 1000 * t, 0, 100 * t, 0 if t < 5 else 30 * (t - 5)) for t in range(0, 12)]
    got = [(a.alarm, a.state) for a in _health(_snapshots(points), rules)]
    assert got == [("store_fallback", "firing")]


def test_references_are_found_next_to_the_model_version_they_belong_to(tmp_path: Path):
    from dataflows.observability import artifact_references

    rows = np.random.default_rng(2).normal(size=(500, 2))
    whole = ModelReference.build("fraud", rows[:, 0], rows, ["a", "b"], top=["b"])
    stage = ModelReference.build("stage2", rows[:, 1])
    (tmp_path / "v1").mkdir()
    whole.save(tmp_path / "v1")
    stage.save(tmp_path / "v1", per_model=True)
    found = artifact_references(tmp_path)
    assert found("fraud", "v1") == whole and found("stage2", "v1") == stage
    assert found("fraud", "v2") is None


def test_an_slo_burn_fires_when_too_many_events_exceed_the_slo_and_resolves_when_they_stop():
    """Events over the latency SLO: 0.2% of them while healthy, 5% for ten seconds, then healthy again."""
    rules = HealthRules(slo_burn=0.01, window_s=4, min_events=50)

    def snap(t: int, over: int) -> HealthSnapshot:
        return HealthSnapshot("fraud/0", t, 0.0, 1000 * t, 0, 100 * t, 0, 1000 * t, over)

    over, snaps = 0, []
    for t in range(30):
        over += 50 if 10 <= t < 20 else 2
        snaps.append(snap(t, over))
    alarms = _health(snaps, rules)
    assert [(a.alarm, a.state) for a in alarms] == [("slo_burn", "firing"), ("slo_burn", "resolved")]
    fired = alarms[0]
    assert fired.subject == "fraud/0" and rules.slo_burn < fired.value <= 0.05  # fires on the first window over it
    assert 10_000 <= fired.at_ms < 20_000 < alarms[1].at_ms  # while the burst lasts, resolved after it


def test_a_mass_of_ties_at_the_top_keeps_a_bin_and_a_window_without_it_is_drift():
    """A capped feature: 80% of training values at the cap. Before, every cut landed on the cap and was
    dropped, the reference had one bin, and a window of all zeros scored PSI 0."""
    ref = Reference.from_values(list(range(20)) + [100.0] * 80, bins=4)
    assert ref.cuts == (19.0,) and ref.proportions == (0.2, 0.8)
    assert ref.psi(ref.counts(np.zeros(100))) > 1.0
    assert cut_points(np.r_[np.arange(60.0), [100.0] * 40], 4) == (24.75, 49.5, 59.0)
    assert cut_points(np.r_[np.arange(20.0), [100.0] * 80], 5) == pytest.approx((83.8,))  # apart: none added
    assert cut_points(np.array([0.0] * 97 + [1.0, 2.0, 3.0]), 4) == (0.5, 1.5, 2.5)  # as many values as bins


def test_drift_counts_survive_a_checkpoint_and_a_batch_without_feature_rows_counts_only_scores():
    rows = np.random.default_rng(1).normal(size=(1000, 2))
    ref = ModelReference.build("m", rows[:, 0], rows, ["a", "b"], top=["b"])
    window = DriftCounts(ref)
    window.add(rows[:100, 0])  # a call that sampled no rows
    assert set(window.psi()) == {"score"}
    window.add(rows[:100, 0], rows[:100])
    again = DriftCounts(ref, window.state())
    assert again.count == window.count == 200 and again.psi() == window.psi()


def _drift_logic(settings: DriftSettings, now: list[datetime], resume: dict | None = None) -> _DriftLogic:
    """One model's drift alarms against a reference split evenly at 0.5, on the clock ``now[0]``."""
    reference = ModelReference("m", Reference((0.5,), (0.5, 0.5)))
    return _DriftLogic(lambda m, v: reference, settings, "fraud", resume, lambda: now[0])


def test_after_an_idle_gap_the_next_drift_window_ends_in_the_future():
    """A flow idle for five windows: the window that closes on its return is followed by one that ends a
    window from now, not by a run of windows closing at once (which would resolve alarms as unjudged)."""
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    settings = DriftSettings(window=timedelta(minutes=1), min_count=10)
    logic = _drift_logic(settings, now)
    logic.on_batch([ScoreSample("m", "v1", np.full(20, 0.2))])
    now[0] += timedelta(minutes=5, seconds=1)
    logic.on_notify()
    assert now[0] < logic.window_end <= now[0] + settings.window


def test_a_firing_drift_alarm_resolves_after_a_restart():
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    settings = DriftSettings(window=timedelta(minutes=1), min_count=20, warmup_windows=0)  # each window has 20
    before = _drift_logic(settings, now)
    before.on_batch([ScoreSample("m", "v1", np.full(20, 0.2))])  # every score below the reference's median
    now[0] += timedelta(minutes=1)
    fired, _ = before.on_notify()
    assert [(a.alarm, a.state) for a in fired] == [("score_drift", "firing")]
    after = _drift_logic(settings, now, before.snapshot())
    after.on_batch([ScoreSample("m", "v1", np.r_[np.full(10, 0.2), np.full(10, 0.8)])])  # back to the reference
    now[0] += timedelta(minutes=1)
    resolved, _ = after.on_notify()
    assert [(a.alarm, a.state) for a in resolved] == [("score_drift", "resolved")]


def test_a_firing_health_alarm_resolves_after_a_restart():
    """The alarm board is part of the checkpoint: a process restarted while dlq_rate fires still resolves it."""
    rules = HealthRules(dlq_rate=0.05, window_s=4, min_events=50)
    before = _HealthLogic(rules, "fraud", None)
    fired, _ = before.on_batch(_snapshots([(t, 0.0, 1000 * t, 200 * t, 0, 0) for t in range(6)]))
    assert [(a.alarm, a.state) for a in fired] == [("dlq_rate", "firing")]
    after = _HealthLogic(rules, "fraud", before.snapshot())
    resolved, _ = after.on_batch(_snapshots([(t, 0.0, 1000 * t, 1000, 0, 0) for t in range(6, 14)]))
    assert [(a.alarm, a.state) for a in resolved] == [("dlq_rate", "resolved")]


def test_lag_growing_slowly_below_its_floor_is_no_alarm_and_rates_are_judged_from_min_events():
    rules = HealthRules(lag_growing_s=6, min_lag_records=100, dlq_rate=0.05, window_s=4, min_events=50)
    rising = _snapshots([(t, float(t), 0, 0, 0, 0) for t in range(60)])  # grows, but never reaches 100
    assert [a for a, _, _, over in check_health(rising, rules) if over] == []
    exactly = _snapshots([(0, 0.0, 0, 0, 0, 0), (4, 0.0, 50, 10, 0, 0)])  # 50 events: enough to judge
    assert [(a, v, over) for a, v, _, over in check_health(exactly, rules)] == [("dlq_rate", 0.2, True)]
