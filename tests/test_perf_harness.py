"""The benchmark harness itself: percentile math, the open-loop scheduler, a smoke run."""

import json

from confluent_kafka import Producer

from operators.kafka.records import KafkaRecord
from perf.bench import RunConfig, RunResult, main, max_sustainable
from sluice.harness.collector import latency_histogram, latency_summary
from sluice.harness.loadgen import send_open_loop


def test_percentiles_on_known_latencies():
    hist = latency_histogram()
    for _ in range(990):
        hist.record_value(10_000)  # 10 ms
    for _ in range(10):
        hist.record_value(500_000)  # 500 ms
    s = latency_summary(hist)
    assert round(s["p50"]) == 10 and round(s["p99"]) == 10 and round(s["p99.9"]) == 500 and round(s["max"]) == 500
    assert latency_summary(latency_histogram()) == {}


def test_max_sustainable_rate_is_the_highest_rate_meeting_p99_with_nothing_lost():
    def run(rate, p99, decided=100):
        return RunResult(RunConfig("fraud", rate), sent=100, decided=decided, latency_ms={"p99": p99})

    assert max_sustainable([run(5000, 20), run(10000, 30), run(20000, 50)]) == 10000
    assert max_sustainable([run(5000, 20), run(10000, 30, decided=90)]) == 5000
    assert max_sustainable([run(5000, 80)]) == 0.0


def test_open_loop_sender_keeps_its_schedule(settings):
    producer = Producer(settings.connection().producer_config())

    def records():
        while True:
            yield lambda sent_ms: [KafkaRecord(settings.transactions_topic, b"k", b"%f" % sent_ms)]

    report = send_open_loop(producer, records(), rate=2000, count=3000)
    assert report.sent == 3000
    assert 1600 < report.rate < 2400  # 1.5 s schedule, generous tolerance for a shared machine
    assert report.lag_p50_ms < 50


def test_smoke_benchmark_writes_a_well_formed_report(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("SLUICE_MODEL_PATH", str(model_dir))
    assert main(["smoke", "--rate", "1000", "--duration", "3", "--out", str(tmp_path)]) == 0
    (report_path,) = tmp_path.glob("smoke-*.json")
    report = json.loads(report_path.read_text())
    (run,) = report["runs"]["fraud"]
    assert run["config"]["rate"] == 1000 and run["sent"] == 4000
    assert run["decided"] == run["sent"]
    assert {"p50", "p90", "p99", "p99.9", "max"} <= set(run["latency_ms"])
    assert run["latency_ms"]["p50"] <= run["latency_ms"]["p99"] <= run["latency_ms"]["max"]
    assert {"flow", "broker", "redis", "generator", "collector"} <= set(run["cpu_s"])
    assert (tmp_path / report_path.name.replace(".json", ".png")).stat().st_size > 10_000
