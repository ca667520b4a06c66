"""The benchmark harness itself: percentile math, the open-loop scheduler, a smoke run."""

import json
import math
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from operators.kafka.records import KafkaRecord
from perf.bench import HEADLINE_KEYS, RunConfig, RunResult, headline_figures, main, max_sustainable, systems_at
from perf.instructions import callgrind_command, collected
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


def test_open_loop_sender_stamps_each_event_with_its_due_time_and_never_sends_it_early(settings):
    producer = Producer(settings.connection().producer_config())
    stamps: list[tuple[float, float]] = []  # (due, when its records were built, just before sending)

    def records():
        while True:

            def build(sent_ms: float) -> list[KafkaRecord]:
                stamps.append((sent_ms, time.time() * 1000.0))
                return [KafkaRecord(settings.transactions_topic, b"k", b"%f" % sent_ms)]

            yield build

    report = send_open_loop(producer, records(), rate=2000, count=3000)
    assert report.sent == len(stamps) == 3000
    due = [d for d, _ in stamps]
    assert all(abs(due[i] - due[0] - i / 2.0) < 1e-3 for i in range(3000))  # the schedule itself: 0.5 ms apart
    assert all(built >= d - 1.0 for d, built in stamps)  # none before its time (1 ms: clock resolution)


def test_smoke_benchmark_writes_a_well_formed_report(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("SLUICE_MODEL_PATH", str(model_dir))
    argv = ["smoke", "--rate", "1000", "--duration", "3", "--out", str(tmp_path), "--profiles", "throughput"]
    assert main([*argv, "--set", "max_batch=64"]) == 0
    (report_path,) = tmp_path.glob("smoke-*.json")
    report = json.loads(report_path.read_text())
    (run,) = report["runs"]["fraud"]
    assert run["config"]["rate"] == 1000 and run["sent"] == 4000
    # the profile and the variant asked for are the ones run (they were the headline's only)
    assert run["config"]["profile"] == "throughput" and run["config"]["env"] == {"SLUICE_MAX_BATCH": "64"}
    assert run["decided"] == run["sent"]
    assert {"p50", "p90", "p99", "p99.9", "max"} <= set(run["latency_ms"])
    assert run["latency_ms"]["p50"] <= run["latency_ms"]["p99"] <= run["latency_ms"]["max"]
    assert {"flow", "broker", "redis", "generator", "collector"} <= set(run["cpu_s"])
    assert (tmp_path / report_path.name.replace(".json", ".png")).stat().st_size > 10_000


@pytest.mark.parametrize(
    ("profiles", "message"),
    [("latency,throughput", "scaling runs one broker profile"), ("thruput", "unknown broker profile 'thruput'")],
)
def test_a_profile_a_benchmark_cannot_run_is_one_line_naming_the_option(profiles, message, capsys):
    with pytest.raises(SystemExit):
        main(["scaling", "--profiles", profiles])
    assert f"--profiles: {message}" in capsys.readouterr().err


def test_the_headline_figures_carry_their_spread_and_say_whether_every_event_came_out_at_20k():
    def system(p50, p99, p50_spread, p99_spread, all_out=True, achieved=19_900.0):
        return {"p50_ms": p50, "p99_ms": p99, "p50_spread": p50_spread, "p99_spread": p99_spread,
                "all_out": all_out, "achieved_per_s": achieved}  # fmt: skip

    rows = [
        {"profile": "throughput", "rate": 15_000.0, "fraud": system(150, 290, (140, 160), (280, 300), achieved=14_990.0)},
        {"profile": "throughput", "rate": 20_000.0, "fraud": system(200, 350, (190, 210), (330, 370)),
         "limit-raw": system(130, 210, (128, 132), (205, 215)), "added_p50_ms": 70, "added_p99_ms": 140},
        {"profile": "latency", "rate": 20_000.0, "fraud": system(900, 1500, (800, 1000), (1400, 1600), all_out=False)},
    ]  # fmt: skip
    out = headline_figures(rows)
    assert out == {
        "sustained_offered_events_per_s": 20_000.0, "sustained_events_per_s": 19_900.0, "all_out_at_20k": 1,
        "p99_ms_at_20k": 350, "p99_ms_at_20k_min": 330, "p99_ms_at_20k_max": 370,
        "p50_ms_at_20k": 200, "p50_ms_at_20k_min": 190, "p50_ms_at_20k_max": 210,
        "added_p99_ms_at_20k": 140, "added_p99_ms_at_20k_min": 115, "added_p99_ms_at_20k_max": 165,
        "added_p50_ms_at_20k": 70, "added_p50_ms_at_20k_min": 58, "added_p50_ms_at_20k_max": 82,
    }  # fmt: skip
    assert set(out) <= set(HEADLINE_KEYS)
    rows[1]["fraud"]["all_out"] = False  # 20k saturated: 15k is the highest rate sustained
    out = headline_figures(rows)
    assert (out["sustained_offered_events_per_s"], out["all_out_at_20k"]) == (15_000.0, 0)


def test_the_readmes_held_out_table_is_generated_from_the_served_models_metrics(model_dir, tmp_path):
    from perf.cascade_bench import write_readme_models_table

    folder = model_dir / (model_dir / "LATEST").read_text().strip()
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- cascade-models -->\nold\n<!-- /cascade-models -->\nafter\n")
    write_readme_models_table(readme, folder)
    text = readme.read_text()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert text.startswith("before\n<!-- cascade-models -->\n| model |") and text.endswith(
        "<!-- /cascade-models -->\nafter\n"
    )
    assert "old" not in text and f"| {metrics['cascade_pr_auc']:.4f} |" in text and f"`{folder.name}`" in text


def test_a_run_that_timed_nothing_leaves_its_spread_out_of_the_headline_instead_of_failing_the_record():
    flow = {"p50_ms": 200, "p99_ms": 350, "p50_spread": (190, float("inf")), "p99_spread": (330, float("inf")),
            "all_out": False, "achieved_per_s": 12_000.0}  # fmt: skip
    raw = {"p50_ms": 130, "p99_ms": 210, "p50_spread": (128, 132), "p99_spread": (205, 215)}
    row = {
        "profile": "throughput",
        "rate": 20_000.0,
        "fraud": flow,
        "limit-raw": raw,
        "added_p50_ms": 70,
        "added_p99_ms": 140,
    }
    out = headline_figures([row])
    assert out["all_out_at_20k"] == 0 and out["p99_ms_at_20k"] == 350 and "p99_ms_at_20k_max" not in out
    assert all(math.isfinite(v) for v in out.values())


def test_every_option_a_drain_run_reads_is_on_the_command_line_the_other_benchmarks_parse():
    """``perf.observe_overhead`` runs ``drain_once`` with ``perf.drain.arguments()``'s options: an option read as
    ``args.x`` that the parser lacks would fail only when that benchmark ran (``env`` once did)."""
    import inspect
    import re

    from perf.drain import arguments, drain_once

    parsed = vars(arguments().parse_args([]))
    read = set(re.findall(r"args\.(\w+)", inspect.getsource(drain_once)))
    assert read and read <= set(parsed), read - set(parsed)


def test_the_instruction_count_is_read_from_callgrind_and_a_missing_one_is_an_error_quoting_its_output():
    log = "==7== Events    : Ir\n==7== Collected : 1102357916\n==7==\n==7== I   refs:      1,102,357,916\n"
    assert collected(log) == 1_102_357_916
    with pytest.raises(RuntimeError, match="valgrind: failed to start"):
        collected("valgrind: failed to start tool 'callgrind'")
    cmd = callgrind_command(5000, Path("/tmp/out"), ["max_batch=64"])
    assert "--toggle-collect=*run_main*" in cmd and cmd[cmd.index("--events") + 1] == "5000"
    assert cmd[-2:] == ["--set", "max_batch=64"]  # the caller's settings last: they win over the fixed deadlines


def test_a_flow_saturated_below_20k_still_runs_at_20k_so_the_summary_keeps_its_20k_figures():
    """A grid of 10k, 15k and 20k once recorded a summary without p99_ms_at_20k: the flow saturated at 15k and
    skipped 20k."""
    assert systems_at(15_000, ["limit-raw", "fraud"], {"fraud"}) == ["limit-raw"]
    assert systems_at(20_000, ["limit-raw", "fraud"], {"fraud"}) == ["limit-raw", "fraud"]
    assert systems_at(25_000, ["limit-raw", "fraud"], {"fraud"}) == ["limit-raw"]
