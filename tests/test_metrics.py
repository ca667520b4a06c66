"""The metrics primitives, the instrumented generic operators (in-process flows), the feature store's counters
against a real Redis, trace spans and headers, and the live view's arithmetic."""

from __future__ import annotations

import bisect
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import replace

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow, Stream
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from dataflows import observability
from operators import metrics, tracing
from operators.alarms import take_snapshot
from operators.dead_letter import parse_or_dead_letter
from operators.enrich import enrich_batch
from operators.event_windows import Windowed, sliding_features
from operators.kafka.records import SourceRecord, header_value
from operators.microbatch import micro_batch
from operators.tracing import TRACEPARENT
from sluice.processes import free_port
from sluice.settings import FraudSettings, SettingsError
from sluice.top import Scrape, View, parse
from state.feature_store import FeatureStore

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def number(value: bytes | None) -> int:
    """The test parser: an int, or ValueError (a dead letter)."""
    return int(value or b"")


PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01".encode()


@pytest.fixture()
def observed() -> Iterator[None]:
    """Metrics recorded (as a flow process with SLUICE_METRICS_PORT set), off again afterwards."""
    metrics.configure("test", enabled=True)
    yield
    metrics.configure("sluice", enabled=False)


def test_counters_written_from_many_threads_lose_nothing():
    c = metrics.Counter("threads_total", "t", ["stage"], catalogue=False)

    def work() -> None:
        for _ in range(20_000):
            c.add(("s",))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.value(("s",)) == 80_000


def test_histograms_take_batches_and_export_cumulative_buckets(observed):
    values = np.array([0.05, 0.3, 3.0, 30.0, 300.0, 70_000.0])
    metrics.STAGE_DURATION.observe_many(("hist-test",), values)
    metrics.STAGE_DURATION.observe(("hist-test",), 3.0)
    samples = [s for s in parse(metrics.exposition().decode()) if s.labels.get("stage") == "hist-test"]
    buckets = [(float(s.labels["le"]), s.value) for s in samples if s.name == "sluice_stage_duration_ms_bucket"]
    assert [c for _, c in buckets] == sorted(c for _, c in buckets)  # cumulative
    assert dict(buckets)[float("inf")] == 7 and dict(buckets)[5.0] == 4 and dict(buckets)[0.1] == 1
    assert next(s.value for s in samples if s.name == "sluice_stage_duration_ms_sum") == pytest.approx(70336.35)
    assert all(s.labels["flow"] == "test" for s in samples)


def _slow_lookup(keys: Iterable[int]) -> tuple[dict[int, int], bool]:
    """A lookup that takes (at least) 2 ms, like a store's round trip."""
    time.sleep(0.002)
    return {k: k for k in keys}, False


def test_the_generic_operators_record_their_stages(observed):
    """parse -> window -> lookup -> micro-batch, in-process: items per stage, dead letters by reason, window
    statuses, batch sizes and waits, event ages from the records' Kafka timestamps."""
    now = int(time.time() * 1000)
    good = [SourceRecord("tx", 0, i, None, b"%d" % (i % 7), now - 40) for i in range(300)]
    bad = [SourceRecord("tx", 0, 300 + i, None, b"not a number", now - 40) for i in range(5)]
    flow = Dataflow("ops")
    parsed = parse_or_dead_letter("m_parse", op.input("in", flow, TestingSource(good + bad, batch_size=50)), number)
    keyed = op.key_on("key", parsed.ok, lambda rv: str(rv[1]))
    windows = sliding_features(
        "m_window",
        keyed,
        ts_getter=lambda rv: float(rv[0].offset),
        value_getter=lambda rv: 1.0,
        tag_getter=lambda rv: "m",
        id_getter=lambda rv: rv[0].offset % 287,  # offsets 287..299 repeat the ids of 0..12, on the same keys
        origin=lambda rv: rv[0],
    )
    looked: Stream[tuple[Windowed[tuple[SourceRecord, int]], int | None, bool]] = enrich_batch(
        "m_lookup",
        op.map("unkey", windows, lambda kv: kv[1]),
        lambda: _slow_lookup,
        lambda w: w.event[1],
        origin=lambda w: w.event[0],
    )
    scored = micro_batch(
        "m_score", looked, lambda b: b, lambda x: "one", max_batch=64, shards=1, origin=lambda x: x[0].event[0]
    )
    out: list[object] = []
    op.output("out", scored, TestingSink(out))
    dead = op.map("dl", parsed.dead, lambda d: d.to_record("dlq"))
    op.output("dead", dead, TestingSink([]))
    run_main(flow)

    items = metrics.STAGE_ITEMS.values()
    assert items[("m_parse",)] == 305 and items[("m_window",)] == 300
    assert items[("m_lookup",)] == 300 and items[("m_score",)] == 300 == len(out)
    assert metrics.DEAD_LETTERS.value(("m_parse", "invalid literal for int with base")) == 5
    assert metrics.WINDOW_EVENTS.value(("m_window", "duplicate")) == 13
    size = metrics.BATCH_SIZE.value(("m_score",))
    assert size.total == 300 and size.count == metrics.BATCH_WAIT.value(("m_score",)).count
    ages = metrics.STAGE_AGE.value(("m_score",))
    assert ages.count == 300 and ages.quantile(0.5) >= 25.0  # the records were 40 ms old when read
    lookups = metrics.LOOKUP_DURATION.value(("m_lookup",))
    assert lookups.count == metrics.STAGE_DURATION.value(("m_lookup",)).count
    assert lookups.total / lookups.count >= 2.0  # milliseconds: every lookup sleeps 2 ms


def test_nothing_is_recorded_while_metrics_are_off():
    metrics.configure("sluice", enabled=False)
    flow = Dataflow("off")
    src = op.input("in", flow, TestingSource([SourceRecord("tx", 0, 1, None, b"1", 1)]))
    op.output("out", parse_or_dead_letter("off_parse", src, number).ok, TestingSink([]))
    run_main(flow)
    assert ("off_parse",) not in metrics.STAGE_ITEMS.values()


def test_the_feature_store_counts_hits_misses_and_fallbacks(stack, observed):
    ns = f"m{time.time_ns()}"
    store: FeatureStore[dict[str, str]] = FeatureStore(stack.redis_url, ns)
    store.put_many({"a": {"x": 1}, "b": {"x": 2}})
    store.get_many(["a", "b", "c"])
    store.get_many(["a", "b", "a"])
    down: FeatureStore[dict[str, str]] = FeatureStore(f"redis://127.0.0.1:{free_port()}/0", f"{ns}-down")
    for _ in range(4):
        down.get_many(["x", "y"])
    samples = parse(metrics.exposition().decode())
    lookups = {
        (s.labels["namespace"], s.labels["result"]): s.value
        for s in samples
        if s.name == "sluice_feature_store_lookups_total" and s.labels["namespace"].startswith(ns)
    }
    assert lookups[(ns, "hit")] == 2 and lookups[(ns, "miss")] == 3 and lookups[(ns, "down")] == 0
    assert lookups[(f"{ns}-down", "down")] == 8
    circuit = {s.labels["namespace"]: s.value for s in samples if s.name == "sluice_feature_store_circuit_open"}
    assert circuit[ns] == 0 and circuit[f"{ns}-down"] == 1
    snapshot = take_snapshot(None, 35.0)
    assert snapshot.lookups >= 13 and snapshot.fallbacks >= 8


@pytest.fixture()
def traced() -> Iterator[None]:
    tracing.configure("t", exporter="memory", sample=1.0)
    yield
    tracing.shutdown()


def test_traced_inputs_get_a_span_per_stage_and_their_header_on_dead_letters(traced):
    unsampled = f"00-{'1' * 32}-{'2' * 16}-00".encode()
    records = [
        SourceRecord("tx", 0, 0, None, b"1", 0, [(TRACEPARENT, PARENT), ("tracestate", b"k=v")]),
        SourceRecord("tx", 0, 1, None, b"2"),
        SourceRecord("tx", 0, 2, None, b"x", 0, [(TRACEPARENT, PARENT), ("tracestate", b"vendor=abc")]),
        SourceRecord("tx", 0, 3, None, b"3", 0, [(TRACEPARENT, unsampled)]),
    ]
    flow = Dataflow("tr")
    parsed = parse_or_dead_letter("parse", op.input("in", flow, TestingSource(records)), number)
    scored = micro_batch("score", parsed.ok, lambda b: b, lambda x: "k", origin=lambda x: x[0])
    op.output("out", scored, TestingSink([]))
    dead: list[object] = []
    op.output("dead", op.map("dl", parsed.dead, lambda d: d.to_record("dlq")), TestingSink(dead))
    run_main(flow)

    spans = tracing.memory_exporter().get_finished_spans()
    names = sorted(s.name for s in spans)
    assert names == ["t.parse", "t.parse", "t.score"]  # the DLQ'd record was parsed, not scored; unsampled: none
    for s in spans:
        assert f"{s.context.trace_id:032x}" == TRACE_ID and s.parent is not None
        assert f"{s.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert header_value(dead[0].headers, TRACEPARENT) == PARENT  # type: ignore[attr-defined]
    assert header_value(dead[0].headers, "tracestate") == b"vendor=abc"  # type: ignore[attr-defined]  # vendors' too


def test_a_sample_share_records_exactly_the_traces_whose_id_falls_under_it():
    """SLUICE_TRACE_SAMPLE=0.25: the producer-sampled traces whose id's low 64 bits are under a quarter of
    their range, the same ones in every process (a trace is recorded whole or not at all)."""
    tracing.configure("t", exporter="memory", sample=0.25)
    try:
        ids = [f"{(i * 0x9E3779B97F4A7C15) % (1 << 128):032x}" for i in range(1, 201)]
        records = [
            SourceRecord("tx", 0, i, None, b"1", 0, [(TRACEPARENT, f"00-{t}-{'3' * 16}-01".encode())])
            for i, t in enumerate(ids)
        ]
        flow = Dataflow("sampled")
        parsed = parse_or_dead_letter("parse", op.input("in", flow, TestingSource(records)), number)
        op.output("out", parsed.ok, TestingSink([]))
        run_main(flow)
        recorded = {f"{s.context.trace_id:032x}" for s in tracing.memory_exporter().get_finished_spans()}
    finally:
        tracing.shutdown()
    expected = {t for t in ids if int(t, 16) & ((1 << 64) - 1) < round(0.25 * (1 << 64))}
    assert recorded == expected and 20 < len(expected) < 80


def test_a_taken_metrics_port_is_one_line_naming_the_setting():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SettingsError) as err:
            observability.start(replace(FraudSettings(), metrics_port=port, metrics_addr="127.0.0.1"), "fraud")
    assert str(err.value).startswith(f"SLUICE_METRICS_PORT={port}: cannot serve metrics on 127.0.0.1:{port}")
    metrics.configure("sluice", enabled=False)


def test_a_trace_file_that_cannot_be_written_is_one_line_at_start(tmp_path):
    settings = replace(FraudSettings(), tracing=True, trace_exporter=f"jsonl:{tmp_path}/missing/spans.jsonl")
    with pytest.raises(SettingsError, match="SLUICE_TRACE_EXPORTER=jsonl:.*cannot write there"):
        observability.start(settings, "fraud")


def test_a_scrape_is_rendered_by_a_flow_thread_and_parses_as_the_text_format(observed):
    """The server thread asks and a flow thread (here: one polling like the Kafka source) renders; what it
    serves is the text format Prometheus parses, label values escaped."""
    metrics.STAGE_ITEMS.add(('odd "stage"\\x',), 7)
    rendered_by: list[str] = []

    def render() -> bytes:
        rendered_by.append(threading.current_thread().name)
        return metrics.exposition()

    handoff = metrics.ScrapeHandoff(render, wait_s=5.0)
    stop = threading.Event()

    def flow_thread() -> None:
        while not stop.is_set():
            handoff.render_if_asked()
            time.sleep(0.001)

    poller = threading.Thread(target=flow_thread, name="flow-worker")
    poller.start()
    try:
        body = handoff.body().decode()
    finally:
        stop.set()
        poller.join()
    assert rendered_by == ["flow-worker"]
    items = {s.labels["stage"]: s.value for s in parse(body) if s.name == "sluice_stage_items_total"}
    assert items['odd "stage"\\x'] == 7


def test_a_failing_render_fails_the_scrape_never_the_flow_thread():
    def broken() -> bytes:
        raise ValueError("a family with a label too many")

    handoff = metrics.ScrapeHandoff(broken, wait_s=5.0)
    answered: list[BaseException] = []

    def scrape() -> None:
        try:
            handoff.body()
        except RuntimeError as exc:
            answered.append(exc)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    deadline = time.monotonic() + 5
    while not handoff.asked and time.monotonic() < deadline:
        time.sleep(0.001)
    handoff.render_if_asked()  # the flow thread's poll: must not raise
    scraper.join(5)
    assert len(answered) == 1 and "a family with a label too many" in str(answered[0])
    assert not handoff.asked  # the next poll renders nothing


def test_the_metrics_server_answers_metrics_and_nothing_else(observed):
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    metrics.STAGE_ITEMS.add(("served",), 3)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310 - loopback
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        body = resp.read().decode()
    assert any(s.name == "sluice_stage_items_total" and s.labels["stage"] == "served" for s in parse(body))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)  # noqa: S310 - loopback
    assert err.value.code == 404


def _exposition(at_items: int, flow: str = "fraud") -> str:
    return f"""# TYPE sluice_stage_items_total counter
sluice_stage_items_total{{flow="{flow}",stage="parse"}} {at_items}
sluice_stage_items_total{{flow="{flow}",stage="score"}} {at_items}
# TYPE sluice_stage_order gauge
sluice_stage_order{{flow="{flow}",stage="parse"}} 1
sluice_stage_order{{flow="{flow}",stage="score"}} 2
# TYPE sluice_source_records_total counter
sluice_source_records_total{{flow="{flow}",topic="tx",partition="0"}} {at_items}
# TYPE sluice_stage_age_ms histogram
sluice_stage_age_ms_bucket{{flow="{flow}",stage="score",le="10.0"}} {at_items // 2}
sluice_stage_age_ms_bucket{{flow="{flow}",stage="score",le="100.0"}} {at_items}
sluice_stage_age_ms_bucket{{flow="{flow}",stage="score",le="+Inf"}} {at_items}
sluice_stage_age_ms_sum{{flow="{flow}",stage="score"}} 0
sluice_stage_age_ms_count{{flow="{flow}",stage="score"}} {at_items}
# TYPE sluice_alarm_active gauge
sluice_alarm_active{{flow="{flow}",alarm="lag_growing",subject="fraud/0"}} {1 if at_items > 1000 else 0}
"""


def test_the_live_view_turns_counters_into_rates_and_buckets_into_quantiles():
    view = View(["http://x/metrics"], window_s=10.0, rate_s=1.0)
    view.add(Scrape(100.0, parse(_exposition(0))))
    view.add(Scrape(102.0, parse(_exposition(2000))))
    assert view.rate("sluice_source_records_total", flow="fraud") == 1000.0
    assert view.quantiles("sluice_stage_age_ms", (0.5,), flow="fraud", stage="score") == [10.0]
    console = Console(record=True, width=120)
    console.print(view.render())
    screen = console.export_text()
    assert "input 1,000/s" in screen and "ALARMS FIRING: lag_growing (fraud/0)" in screen
    lines = screen.splitlines()
    parse_row = next(i for i, line in enumerate(lines) if "parse" in line and "1,000" in line)
    score_row = next(i for i, line in enumerate(lines) if "score" in line and "1,000" in line)
    assert parse_row < score_row  # upstream first


@given(
    st.lists(st.floats(min_value=0.0, max_value=70_000.0), min_size=1, max_size=200),
    st.floats(min_value=0.05, max_value=65_000.0),
)
def test_the_share_above_a_target_is_between_its_bucket_edges_shares_and_exact_at_the_edges(ms, target):
    """An SLO target between two bucket edges (40 ms between 35 and 50) is read between the shares above
    those edges, never as the lower edge; at an edge it is the exact share."""
    bounds = (*metrics.MS_BUCKETS, float("inf"))
    cumulative = tuple(sum(1 for v in ms if v <= b) for b in bounds)
    h = metrics.HistogramValue(bounds, cumulative, sum(ms))
    i = bisect.bisect_left(bounds, target)
    lower = bounds[i - 1] if i else 0.0
    above_lower = sum(1 for v in ms if v > lower) / len(ms) if i else 1.0  # the first bucket starts at 0, included
    above_upper = sum(1 for v in ms if v > bounds[i]) / len(ms)
    assert above_upper - 1e-9 <= h.share_above(target) <= above_lower + 1e-9
    if target in bounds:
        assert h.share_above(target) == pytest.approx(sum(1 for v in ms if v > target) / len(ms))
    edge = bounds[min(i, len(metrics.MS_BUCKETS) - 1)]
    assert h.share_above(edge) == pytest.approx(sum(1 for v in ms if v > edge) / len(ms))
