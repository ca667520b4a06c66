"""Drain benchmark: a backlog of N events, then the flow's own throughput (no load generator running).

``python -m perf.drain --count 200000 --runs 3 [--flow "dataflows.fraud:from_env()"]``:
fills the input topic first, then times the flow from its first decision until 99% of the
backlog is decided (a fixed share: the stream's malformed events go to the dead-letter topic,
not the decisions), the events decided over that span, and the flow process's CPU time per event. Isolates the flow's per-event
cost from the sender's and the collector's. Each run is a fresh stack; the
figures are the median of the runs (spread beside them), written to
``perf/reports/drain-<date>[-label].json`` and, for the default at-least-once fraud
flow, to ``summary.json`` (``fraud.drain_events_per_s``, ``fraud.drain_cpu_us_per_event``).
A variant (``--set FIELD=VALUE``, ``--label``, ``--flame``, ``--metrics``, a smaller ``--count``, fewer than
3 ``--runs``) only writes its report.

``--metrics`` runs the flow with its metrics on (``SLUICE_METRICS_PORT``) and
scrapes ``/metrics`` every second while it drains, as a Prometheus would
(a shorter interval than usual: an upper bound on the scrape cost); such runs
only write their report (``perf.observe_overhead`` compares them with plain ones).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, replace

import orjson
import psutil
from confluent_kafka import Consumer, TopicPartition

from models.synthetic_transactions import TransactionStream
from models.train_fraud import ensure_trained
from operators.kafka.admin import log
from operators.kafka.connection import KafkaConnection
from perf.summary import (
    REPORTS,
    add_variant_option,
    broker_profile,
    median_and_spread,
    record_unless,
    report_stem,
    why_not_recorded,
)
from sluice.harness.collector import poll_batch
from sluice.harness.loadgen import send_open_loop
from sluice.harness.progress import Progress
from sluice.local.profiles import load_profiles
from sluice.local.stack import PROJECT_ROOT, LocalStack
from sluice.local.transactions import event_records, sender
from sluice.processes import FlowProcesses, free_port, init_recovery
from sluice.settings import FraudSettings

DEFAULT_FLOW = "dataflows.fraud:from_env()"
DEFAULT_COUNT = 200_000  # the recorded backlog; a smaller one is a smoke run
DEFAULT_CARDS = 20_000


class OutputCounter:
    """Counts records arriving on ``topic`` (reading them: Tansu 0.6 lists high watermarks wrong)."""

    def __init__(self, conn: KafkaConnection, topic: str, partitions: int) -> None:
        self.consumer = Consumer(
            conn.consumer_config(
                **{"group.id": "drain", "isolation.level": "read_committed", "logger": log, "fetch.wait.max.ms": 20}
            )
        )
        self.consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        self.count = 0
        self.first_ms = float("inf")
        self.last_ms = 0.0

    def poll(self) -> int:
        for m in poll_batch(self.consumer, 0.05, 10_000):
            if m.error() is None:
                decided = orjson.loads(m.value() or b"{}").get("decided_at", 0.0)
                self.first_ms, self.last_ms = min(self.first_ms, decided), max(self.last_ms, decided)
                self.count += 1
        return self.count


@dataclass
class DrainRun:
    decisions: int
    seconds: float
    events_per_s: float
    cpu_us_per_event: float
    disk_bytes_per_event: float  # what the flow process wrote to disk (recovery store, logs) per decision; Linux


def drain_once(args: argparse.Namespace, run: int) -> DrainRun:
    base = replace(
        FraudSettings.from_env(args.env),
        topic_partitions=args.partitions,
        broker_profile=args.profile,
    )
    state = PROJECT_ROOT / ".stack" / "drain" / f"run-{run}"
    stack = LocalStack(free_port(), free_port(), state, topics=base.topics()).start()
    settings = replace(base, brokers=stack.brokers, redis_url=stack.redis_url, exactly_once=args.exactly_once)
    metrics = args.metrics
    if metrics:
        settings = replace(settings, metrics_port=free_port(), metrics_addr="127.0.0.1")
    scraping: Scraper | None = None
    profiler: subprocess.Popen[bytes] | None = None
    recovery = None
    if args.exactly_once:
        recovery = state / "recovery"
        init_recovery(recovery)
    flow = FlowProcesses(args.flow, settings.to_env(), log_dir=state, recovery_dir=recovery)
    try:
        load_profiles(settings, 7, min(args.cards, DEFAULT_CARDS))  # more cards: the rest have no profile
        stream = TransactionStream(3, n_cards=args.cards)
        send_open_loop(sender(settings), event_records(stream, settings), 1e9, args.count)
        counter = OutputCounter(settings.connection(), settings.decisions_topic, args.partitions)
        flow.start()
        scrape_every = args.scrape_every
        scraping = Scraper(settings.metrics_port, scrape_every) if metrics and scrape_every > 0 else None
        proc = psutil.Process(flow.pids[0])
        flame = args.flame
        if flame and run == 0:
            profiler = flame_graph(flow.pids[0], REPORTS / flame)
        shown = Progress(args.count, "decided", enabled=None)
        samples: list[tuple[float, float]] = []  # (epoch ms, flow CPU seconds)
        written_at_start = _written(proc)
        while counter.poll() < args.count * 0.99:
            samples.append((time.time() * 1000, sum(proc.cpu_times()[:2])))
            shown.update(counter.count)
            if not flow.alive():
                raise RuntimeError(f"the flow exited; see {state}")
        shown.close()
        samples.append((time.time() * 1000, sum(proc.cpu_times()[:2])))
        written = _written(proc) - written_at_start
        cpu_at_first = next(c for t, c in samples if t >= counter.first_ms)
        cpu_at_last = next((c for t, c in samples if t >= counter.last_ms), samples[-1][1])
        span_s = (counter.last_ms - counter.first_ms) / 1000
        return DrainRun(
            counter.count,
            round(span_s, 3),
            round(counter.count / span_s, 1),
            round(1e6 * (cpu_at_last - cpu_at_first) / counter.count, 2),
            round(written / counter.count, 1),
        )
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes the graph when interrupted
            profiler.wait(60)
        if scraping is not None:
            scraping.stop()
        flow.stop()
        stack.stop()


def _written(proc: psutil.Process) -> int:
    """Bytes ``proc`` has written to disk (0 where psutil cannot tell, as on macOS)."""
    counters = getattr(proc, "io_counters", None)
    return int(counters().write_bytes) if counters is not None else 0


def flame_graph(pid: int, out: object) -> subprocess.Popen[bytes]:
    """py-spy sampling the flow process (native frames off, 100 Hz: ~1% of a core) into an SVG flame graph, or
    into collapsed stacks (one ``frame;frame;... count`` line per stack, to aggregate) when ``out`` ends in ``.txt``."""
    spy = shutil.which("py-spy") or str(PROJECT_ROOT / ".venv" / "bin" / "py-spy")
    form = "raw" if str(out).endswith(".txt") else "flamegraph"
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "100", "--format", form, "--output", str(out),
                             "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


class Scraper:
    """Reads ``/metrics`` every ``every_s`` from a background thread, as Prometheus would (errors ignored:
    the server is not up during the flow's first second)."""

    def __init__(self, port: int, every_s: float = 1.0) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.every_s = every_s
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:  # noqa: S310 - our own flow
                    resp.read()
                self.scrapes += 1
            except OSError:
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def arguments() -> argparse.ArgumentParser:
    """The command line, also what :mod:`perf.observe_overhead` parses to get every option ``drain_once`` reads."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--cards", type=int, default=DEFAULT_CARDS, help="cards in the backlog (profiles: 20,000)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flow", default=DEFAULT_FLOW)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--profile", type=broker_profile, default="latency", help="broker profile (latency, throughput, kafka)"
    )
    parser.add_argument("--exactly-once", action="store_true", help="transactional sink, recovery with -s 1")
    parser.add_argument("--label", default="", help="a name for this variant in the report file")
    parser.add_argument("--metrics", action="store_true", help="metrics on, /metrics scraped every second")
    parser.add_argument("--scrape-every", type=float, default=1.0, help="seconds between scrapes (0: none)")
    add_variant_option(parser, FraudSettings)
    parser.add_argument(
        "--flame",
        default="",
        help="a py-spy flame graph of the first run, into perf/reports/<FLAME> (collapsed stacks if it ends in .txt)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arguments().parse_args(argv)
    ensure_trained(FraudSettings().model_path)
    runs = []
    for i in range(args.runs):
        r = drain_once(args, i)
        runs.append(r)
        print(f"run {i + 1}: {r.decisions} decisions in {r.seconds:.2f}s = {r.events_per_s:,.0f}/s; "
              f"flow CPU {r.cpu_us_per_event:.1f} us/event, {r.disk_bytes_per_event:,.0f} bytes/event to disk",
              flush=True)  # fmt: skip
    rate, rate_lo, rate_hi = median_and_spread([r.events_per_s for r in runs])
    cpu, cpu_lo, cpu_hi = median_and_spread([r.cpu_us_per_event for r in runs])
    mode = ("exactly-once" if args.exactly_once else "at-least-once") + (" + metrics" if args.metrics else "")
    print(f"{args.flow} ({mode}, {args.profile}): median {rate:,.0f} events/s ({rate_lo:,.0f}-{rate_hi:,.0f}), "
          f"{cpu:.1f} us/event ({cpu_lo:.1f}-{cpu_hi:.1f})")  # fmt: skip
    report = {
        "benchmark": "drain",
        "command": "python -m perf.drain " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "flow": args.flow,
        "mode": mode,
        "profile": args.profile,
        "settings": args.env,
        "count": args.count,
        "runs": [r.__dict__ for r in runs],
        "median_events_per_s": rate,
        "events_per_s_spread": [rate_lo, rate_hi],
        "median_cpu_us_per_event": cpu,
        "cpu_us_per_event_spread": [cpu_lo, cpu_hi],
    }
    report_stem("drain", args.label).with_suffix(".json").write_text(json.dumps(report, indent=1))
    # metrics, the profiler (its sampling costs a little CPU), settings and labelled runs: variants
    reason = why_not_recorded(
        args.runs, metrics=args.metrics, flame=args.flame, set=args.env, label=args.label,
        flow=args.flow if args.flow != DEFAULT_FLOW else "", profile=args.profile if args.profile != "latency" else "",
        other_backlog=args.count != DEFAULT_COUNT or args.cards != DEFAULT_CARDS,
        partitions=args.partitions if args.partitions != 4 else 0,
    )  # fmt: skip
    if not args.exactly_once:
        record_unless(reason, "fraud", {"drain_events_per_s": rate, "drain_events_per_s_min": rate_lo,
                                        "drain_events_per_s_max": rate_hi, "drain_cpu_us_per_event": cpu,
                                        "drain_cpu_us_per_event_min": cpu_lo, "drain_cpu_us_per_event_max": cpu_hi})  # fmt: skip
    else:
        record_unless(reason, "fraud", {"drain_exactly_once_events_per_s": rate})
    return 0


if __name__ == "__main__":
    sys.exit(main())
