"""Observability of a running fraud flow on the real broker and Redis: the metrics it serves agree with what it
wrote, traced inputs keep their trace on their outputs and get spans, and ``sluice top`` shows the flow live
(run in tmux, read from the screen)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Message, Producer

from models.synthetic_transactions import TransactionStream
from operators.kafka.admin import read_all
from operators.kafka.records import header_value
from operators.tracing import TRACEPARENT
from sluice.harness.loadgen import send_open_loop
from sluice.local.transactions import event_records, sender
from sluice.processes import FlowProcesses, free_port
from sluice.settings import FraudSettings
from sluice.top import Sample, parse
from tests.helpers import fraud_settings, start_flow, txn, wait_for, wait_for_decisions

VALID, BAD = 400, 6


def traceparent(i: int) -> bytes:
    return f"00-{i:032x}-{i + 1:016x}-01".encode()


@dataclass
class Run:
    settings: FraudSettings
    flow: FlowProcesses
    port: int
    spans: Path
    traced_ok: dict[str, bytes]  # event id -> traceparent sent
    traced_bad: bytes
    # taken once the flow settled on the VALID + BAD inputs, before any test sends more (the live-view
    # test does): the metrics test compares these, so it holds in any test order
    samples: list[Sample] = field(default_factory=list)
    outputs: dict[str, list[Message]] = field(default_factory=dict)

    def scrape(self) -> list[Sample]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            return parse(resp.read().decode())

    def total(self, samples: list[Sample], name: str, **match: str) -> float:
        return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in match.items()))


@pytest.fixture(scope="module")
def run(stack, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """The fraud flow with metrics and tracing on, after it decided VALID events and dead-lettered BAD ones."""
    work = tmp_path_factory.mktemp("observed")
    port = free_port()
    settings = fraud_settings(
        stack,
        model_dir,
        metrics_port=port,
        metrics_addr="127.0.0.1",
        tracing=True,
        trace_exporter=f"jsonl:{work / 'spans.jsonl'}",
        slo_ms=10_000.0,  # the SLO-burn alarm has its own test; on a loaded CI box the 35 ms target would fire here
        alarm_window_s=2.0,  # the dead-letter alarm's test (last) fires it with a few seconds of bad input
        alarm_dlq_rate=0.1,  # above any window of the fixture's own input (6 bad records, windows of 100 or more)
    )
    now = time.time() * 1000
    txns = [txn(f"o-{i}", f"card-{i % 23}", 10.0 + i % 50, t_s=43_200 + i) for i in range(VALID)]
    traced_ok = {t.event_id: traceparent(i + 1) for i, t in enumerate(txns[:3])}
    producer = Producer(settings.connection().producer_config())
    for t in txns:
        headers: list[tuple[str, str | bytes | None]] | None = None
        if t.event_id in traced_ok:
            headers = [(TRACEPARENT, traced_ok[t.event_id])]
        producer.produce(settings.transactions_topic, key=t.card_id.encode(), value=t.to_json(now), headers=headers)
    traced_bad = traceparent(99)
    for i in range(BAD):
        bad_headers: list[tuple[str, str | bytes | None]] | None = [(TRACEPARENT, traced_bad)] if i == 0 else None
        producer.produce(settings.transactions_topic, key=b"bad", value=b'{"event_id": "broken', headers=bad_headers)
    assert producer.flush(30) == 0
    flow = start_flow(settings, work)
    try:
        assert len(wait_for_decisions(settings, VALID, timeout_s=120)) == VALID
        assert len(wait_for(settings, settings.dlq_topic, BAD)) == BAD
        run = Run(settings, flow, port, work / "spans.jsonl", traced_ok, traced_bad)
        run.samples = _settled(run)
        run.outputs = {t: read_all(settings.connection(), t) for t in settings.output_topics()}
        yield run
    finally:
        flow.stop()


def _settled(run: Run, timeout_s: float = 30.0) -> list[Sample]:
    """A scrape taken once the flow has counted every input and written every output (and seen its lag)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = run.scrape()
        read = run.total(samples, "sluice_source_records_total")
        written = run.total(samples, "sluice_sink_records_total", topic=run.settings.dlq_topic)
        lag = [s for s in samples if s.name == "sluice_source_lag_records"]
        if (read >= VALID + BAD and written >= BAD and len(lag) == 3) or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


def test_the_metrics_a_running_flow_serves_agree_with_what_it_wrote(run: Run):
    samples, s = run.samples, run.settings
    decisions, dead = run.outputs[s.decisions_topic], run.outputs[s.dlq_topic]
    assert run.total(samples, "sluice_source_records_total", topic=s.transactions_topic) == VALID + BAD
    assert run.total(samples, "sluice_stage_items_total", stage="parse") == VALID + BAD
    assert run.total(samples, "sluice_dead_letters_total") == len(dead) == BAD
    assert run.total(samples, "sluice_dead_letters_total", step="parse", reason="not valid JSON") == BAD
    for stage in ("window", "profiles", "stage1"):
        assert run.total(samples, "sluice_stage_items_total", stage=stage) == VALID, stage
    assert run.total(samples, "sluice_batch_size_sum", stage="stage1") == VALID
    escalated = sum(1 for m in decisions if b'"gru"' in (m.value() or b""))
    assert run.total(samples, "sluice_stage_items_total", stage="stage2") == escalated
    assert run.total(samples, "sluice_decisions_total") == VALID  # decisions by outcome add up
    rows = run.total(samples, "sluice_model_rows_total")
    assert rows == VALID + escalated  # every model call counted: stage 1 for all, the GRU for the band
    assert run.total(samples, "sluice_sink_records_total", topic=s.decisions_topic) == len(decisions) == VALID
    assert run.total(samples, "sluice_sink_records_total", topic=s.dlq_topic) == BAD
    written = sum(len(msgs) for msgs in run.outputs.values())  # decisions, features, notes...
    assert run.total(samples, "sluice_stage_items_total", stage="sink") == written
    assert run.total(samples, "sluice_sink_records_total", topic=s.features_topic) == VALID  # the feature log
    lookups = run.total(samples, "sluice_feature_store_lookups_total", namespace="card")
    assert 23 <= lookups <= VALID and run.total(samples, "sluice_feature_store_circuit_open") == 0
    assert run.total(samples, "sluice_source_lag_records") == 0  # caught up
    assert run.total(samples, "sluice_stage_age_ms_count", stage="parse") > 0
    assert run.total(samples, "sluice_flow_info", flow="fraud", process="0") == 1


def test_a_traced_input_keeps_its_trace_on_its_output_and_gets_spans(run: Run):
    dead = read_all(run.settings.connection(), run.settings.dlq_topic)
    carried = [header_value(m.headers(), TRACEPARENT) for m in dead]
    assert carried.count(run.traced_bad) == 1 and carried.count(None) == BAD - 1
    wanted = {tp.split(b"-")[1].decode() for tp in [*run.traced_ok.values(), run.traced_bad]}
    deadline = time.monotonic() + 10
    spans: list[dict[str, object]] = []
    while time.monotonic() < deadline:  # spans are exported every half second
        spans = [json.loads(line) for line in run.spans.read_text().splitlines()] if run.spans.exists() else []
        if {(sp["trace_id"], sp["name"]) for sp in spans} >= {(t, "fraud.parse") for t in wanted}:
            break
        time.sleep(0.5)
    by_trace: dict[object, set[object]] = {}
    for sp in spans:
        by_trace.setdefault(sp["trace_id"], set()).add(sp["name"])
    assert set(by_trace) == wanted  # only the traced inputs
    bad_trace = run.traced_bad.split(b"-")[1].decode()
    assert by_trace[bad_trace] >= {"fraud.parse", "fraud.sink"}  # its dead letter was written with the header
    parents = {sp["parent_id"] for sp in spans if sp["trace_id"] == bad_trace}
    assert parents == {run.traced_bad.split(b"-")[2].decode()}  # children of the producer's span
    decided = {
        orjson.loads(m.value() or b"")["event_id"]: header_value(m.headers(), TRACEPARENT)
        for m in read_all(run.settings.connection(), run.settings.decisions_topic)
    }
    for event_id, sent in run.traced_ok.items():
        assert decided[event_id] == sent  # the decision carries its input's trace
        assert by_trace[sent.split(b"-")[1].decode()] >= {"fraud.window", "fraud.profiles", "fraud.stage1"}


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_sluice_top_shows_the_running_flow_live(run: Run, tmp_path: Path):
    """The live view in a real terminal (tmux) against the running flow, while events keep arriving."""
    s = run.settings
    stop = threading.Event()
    records = event_records(TransactionStream(11, n_cards=500), s)

    def send() -> None:
        while not stop.is_set():
            send_open_loop(sender(s), records, 400, 400, progress=None)

    feeder = threading.Thread(target=send, daemon=True)
    feeder.start()
    socket_name = f"sluice-test-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", socket_name]
    command = f"{sys.executable} -m sluice top {run.port} --interval 1"
    subprocess.run([*tmux, "new-session", "-d", "-s", "top", "-x", "150", "-y", "45", command], check=True)
    try:
        screen = ""
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            time.sleep(1.0)
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", "top"], capture_output=True, text=True).stdout
            rows = _stage_rows(screen)
            if {"parse", "window", "profiles", "stage1", "sink"} <= set(rows) and all(r > 0 for r in rows.values()):
                break
        rows = _stage_rows(screen)
        assert {"parse", "window", "profiles", "stage1", "sink"} <= set(rows), screen
        assert all(rate > 0 for rate in rows.values()), screen
        assert "fraud" in screen and "store card" in screen and "alarms: none" in screen, screen
        summary = next(line for line in screen.splitlines() if "input " in line)
        assert float(summary.split("input ", 1)[1].split("/s", 1)[0].replace(",", "")) > 0, summary
    finally:
        stop.set()
        subprocess.run([*tmux, "kill-server"], check=False)
        feeder.join(10)


def _stage_rows(screen: str) -> dict[str, float]:
    """Stage name -> items/s from the stage table on the screen."""
    rows = {}
    for line in screen.splitlines():
        cells = line.strip("│ ").split()
        if len(cells) >= 2 and cells[0] in ("parse", "window", "profiles", "stage1", "stage2", "sink"):
            try:
                rows[cells[0]] = float(cells[1].replace(",", ""))
            except ValueError:
                continue
    return rows


def test_a_share_of_bad_input_over_the_threshold_fires_the_dead_letter_alarm_on_its_topic_and_gauge(run: Run):
    """Last in the module (the live view's test expects no alarm): five seconds of input, a fifth of it
    malformed, against a 10% threshold over a 2 s window."""
    s = run.settings
    send_open_loop(sender(s), event_records(TransactionStream(12, n_cards=200), s, 0.2), 200, 1000, progress=None)
    deadline = time.monotonic() + 30
    while not (firing := [a for a in _alarms(s) if (a["alarm"], a["state"]) == ("dlq_rate", "firing")]):
        assert time.monotonic() < deadline, _alarms(s)
        time.sleep(0.5)
    # over the threshold, and at most the share sent (the window may still hold clean input from the test before)
    assert firing[0]["flow"] == "fraud" and firing[0]["threshold"] == 0.1 < firing[0]["value"] < 0.35, firing
    assert run.total(run.scrape(), "sluice_alarm_active", alarm="dlq_rate") == 1
    assert run.total(run.scrape(), "sluice_alarms_total", alarm="dlq_rate") >= 1


def _alarms(s: FraudSettings) -> list[dict[str, Any]]:
    return [orjson.loads(m.value() or b"{}") for m in read_all(s.connection(), s.alarms_topic)]
