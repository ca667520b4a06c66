"""Benchmarks: ``python -m perf.bench {headline,batch-sweep,scaling,per-event,smoke}``.

Every run starts a fresh local stack, prepares state, starts the system under
test (``python -m bytewax.run ...`` or the raw baseline), waits until it answers
a probe event, then drives open-loop load at a fixed rate for ``--duration``
seconds while a collector process reads the output. Latency is end to end: the
output's arrival at the collector minus the time the event was due to be sent (the
open-loop schedule, carried in the event: a sender that falls behind is counted), recorded in an HDR histogram after ``--warmup`` seconds. Reports go to
``perf/reports/<benchmark>-<date>.json`` with a PNG plot.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from models.synthetic_transactions import TransactionStream
from models.train_fraud import ensure_trained
from perf.summary import (
    REPORTS,
    add_variant_option,
    broker_profiles,
    median_and_spread,
    record_unless,
    report_stem,
    why_not_recorded,
)
from sluice.harness.collector import BackgroundCollector
from sluice.harness.loadgen import send_open_loop
from sluice.local.demo_fraud import wait_until_deciding
from sluice.local.profiles import load_profiles
from sluice.local.stack import PROJECT_ROOT, LocalStack
from sluice.local.transactions import event_records, sender
from sluice.processes import FlowProcesses, free_port
from sluice.settings import FraudSettings

TARGET_P99_MS = 35.0
DEFAULT_PARTITIONS = 4  # --partitions sets it for every run of an invocation
SYSTEMS = {
    "limit-raw": None,  # not a Bytewax flow: python -m perf.limit_raw
    "limit-bytewax": "perf.limit_bytewax:from_env()",
    "fraud": "dataflows.fraud:from_env()",
}


@dataclass
class RunConfig:
    system: str
    rate: float
    duration_s: float = 10.0
    warmup_s: float = 2.0
    processes: int = 1
    workers: int = 1
    max_batch: int = 256
    max_wait_ms: float = 5.0
    partitions: int = field(default_factory=lambda: DEFAULT_PARTITIONS)
    profile: str = "latency"  # broker profile of every client: flow, generator and collector
    env: dict[str, str] = field(default_factory=dict)  # SLUICE_* overrides for the system under test
    # (name, seconds after sending starts, action): e.g. promoting a model mid-run
    hooks: list[tuple[str, float, Callable[[], None]]] = field(default_factory=list)


@dataclass
class RunResult:
    config: RunConfig
    sent: int = 0
    decided: int = 0
    duplicates: int = 0
    achieved_rate: float = 0.0
    sender_lag_p99_ms: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    latency_over_time: list[tuple[float, float]] = field(default_factory=list)
    marks_s: dict[str, float] = field(default_factory=dict)  # when each hook ran, on latency_over_time's clock

    @property
    def p99(self) -> float:
        return self.latency_ms.get("p99", float("inf"))

    def sustained(self, target_ms: float = TARGET_P99_MS) -> bool:
        return self.decided >= 0.999 * self.sent and self.p99 <= target_ms


class _Cpu:
    """CPU seconds used by named processes between start and stop."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.procs = {name: [psutil.Process(p) for p in ps] for name, ps in pids.items()}
        self.start = {name: self._total(ps) for name, ps in self.procs.items()}

    @staticmethod
    def _total(procs: list[psutil.Process]) -> float:
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    def stop(self) -> dict[str, float]:
        return {name: round(self._total(ps) - self.start[name], 2) for name, ps in self.procs.items()}


def run_one(cfg: RunConfig, model_path: str, log_dir: Path) -> RunResult:
    """One system at one offered rate, on a fresh stack."""
    stack = LocalStack(free_port(), free_port(), log_dir / "stack")
    base = replace(FraudSettings(), topic_partitions=cfg.partitions, broker_profile=cfg.profile)
    stack.topics = base.topics()
    stack.start()
    settings = replace(
        base,
        brokers=stack.brokers,
        redis_url=stack.redis_url,
        model_path=model_path,
        max_batch=cfg.max_batch,
        max_wait_ms=cfg.max_wait_ms,
    )
    raw = [sys.executable, "-m", "perf.limit_raw"] if SYSTEMS[cfg.system] is None else None
    flow = FlowProcesses(
        SYSTEMS[cfg.system] or "",
        {**settings.to_env(), **cfg.env},
        processes=cfg.processes,
        workers=cfg.workers,
        log_dir=log_dir,
        program=raw,
    )
    result = RunResult(cfg)
    try:
        load_profiles(settings, seed=7, n_cards=20_000)
        flow.start()
        wait_until_deciding(settings, flow)
        count = int(cfg.rate * (cfg.duration_s + cfg.warmup_s))
        # encoded before the clock starts, so the sender's CPU does not compete with the flow
        events = list(itertools.islice(event_records(TransactionStream(11, n_cards=20_000), settings), count))
        collector = BackgroundCollector(
            connection=settings.connection(),
            topic=settings.decisions_topic,
            expected=count,
            timeout_s=cfg.duration_s + cfg.warmup_s + 60,
            warmup_s=cfg.warmup_s,
            idle_stop_s=15.0,
        )
        cpu = _Cpu(
            {
                "flow": flow.pids,
                "broker": [stack.procs["tansu"].pid],
                "redis": [stack.procs["redis"].pid],
                "generator": [os.getpid()],
            }
        )
        marks_ms: dict[str, float] = {}
        timers = [threading.Timer(at_s, _mark, (marks_ms, name, action)) for name, at_s, action in cfg.hooks]
        for timer in timers:
            timer.start()
        sent = send_open_loop(sender(settings), iter(events), cfg.rate, count)
        for timer in timers:
            timer.join()
        got = collector.result(timeout_s=cfg.duration_s + cfg.warmup_s + 120)
        result.cpu_s = {**cpu.stop(), "collector": round(got.cpu_s, 2)}
        result.sent, result.decided, result.duplicates = sent.sent, len(got.by_event), got.duplicates
        result.sender_lag_p99_ms = round(sent.lag_p99_ms, 3)
        span = (got.last_receive - got.first_receive) / 1000 or 1e-9
        result.achieved_rate = round(len(got.by_event) / span, 1)
        result.latency_ms = {k: round(v, 2) for k, v in got.latency_ms.items()}
        t0 = got.latency_over_time[0][0] if got.latency_over_time else 0
        result.latency_over_time = [(round((t - t0) / 1000, 3), round(lat, 2)) for t, lat in got.latency_over_time]
        result.marks_s = {name: round((at - t0) / 1000, 3) for name, at in marks_ms.items()}
    finally:
        flow.stop()
        stack.stop()
    return result


def _mark(marks_ms: dict[str, float], name: str, action: Callable[[], None]) -> None:
    marks_ms[name] = time.time() * 1000
    action()


def describe(r: RunResult) -> str:
    c, lat = r.config, r.latency_ms
    return (
        f"{c.system:14s} {c.profile:10s} rate {c.rate:>7.0f} p{c.processes}w{c.workers} b{c.max_batch}/{c.max_wait_ms:g}ms | "
        f"out {r.decided}/{r.sent} {r.achieved_rate:>8.0f}/s | p50 {lat.get('p50', -1):7.1f} p99 {lat.get('p99', -1):8.1f} "
        f"p99.9 {lat.get('p99.9', -1):8.1f} max {lat.get('max', -1):8.1f} ms | lag99 {r.sender_lag_p99_ms:.1f} | cpu {r.cpu_s}"
    )


def sweep_rates(system: str, rates: list[float], model: str, logs: Path, **kw: object) -> list[RunResult]:
    """Offered rates in order; stops once P99 passes one second."""
    out = []
    for rate in rates:
        r = run_one(RunConfig(system, rate, **kw), model, logs)  # type: ignore[arg-type]
        print(describe(r), flush=True)
        out.append(r)
        if r.p99 > 1000 or r.decided < 0.5 * r.sent:
            break
    return out


def max_sustainable(results: list[RunResult]) -> float:
    ok = [r.config.rate for r in results if r.sustained()]
    return max(ok) if ok else 0.0


SUMMARY_RATE = 20_000  # the offered rate of the summary's latency figures (``p99_ms_at_20k``, ...)


def systems_at(rate: float, systems: list[str], stopped: set[str]) -> list[str]:
    """The systems a headline runs at ``rate``: a system that saturated at a lower rate skips the higher
    ones (they only queue more), except :data:`SUMMARY_RATE`, whose figures the summary records: a grid
    with 15,000 below it must not drop them.

    >>> systems_at(15_000, ["limit-raw", "fraud"], {"fraud"}), systems_at(20_000, ["limit-raw", "fraud"], {"fraud"})
    (['limit-raw'], ['limit-raw', 'fraud'])
    """
    return [s for s in systems if s not in stopped or rate == SUMMARY_RATE]


def bench_headline(args: argparse.Namespace, model: str, logs: Path) -> dict:
    """Per broker profile: the raw passthrough and the flow (``--systems``) at each rate, ``--runs`` times,
    runs of one rate alternated between the systems so that a noisy minute hits both; the flow's added
    latency is its median P50/P99 minus the passthrough's at the same rate and profile."""
    runs: dict[str, list[RunResult]] = {}
    table: list[dict[str, object]] = []
    for profile in args.profiles:
        stopped: set[str] = set()
        for rate in args.rates:
            at_rate: dict[str, list[RunResult]] = {s: [] for s in systems_at(rate, args.systems, stopped)}
            for _ in range(args.runs):
                for system in at_rate:
                    cfg = RunConfig(system, rate, duration_s=args.duration, profile=profile, env=dict(args.env))
                    r = run_one(cfg, model, logs)
                    print(describe(r), flush=True)
                    at_rate[system].append(r)
            for system, rs in at_rate.items():
                runs.setdefault(f"{system} ({profile})", []).extend(rs)
                if min(r.p99 for r in rs) > 1000 or max(r.decided for r in rs) < 0.5 * rs[0].sent:
                    stopped.add(system)  # saturated: higher rates only queue more
            table.append(headline_row(profile, rate, at_rate))
    reason = why_not_recorded(
        args.runs, label=args.label, no_record=args.no_record, set=args.env, without_20k=SUMMARY_RATE not in args.rates,
        shorter=args.duration < 10.0, partitions=args.partitions if args.partitions != 4 else 0,
        without_limit_raw="limit-raw" not in args.systems, without_throughput="throughput" not in args.profiles,
    )  # fmt: skip
    record_unless(reason, "fraud", headline_figures(table), owns=HEADLINE_KEYS)
    return {"runs": runs, "table": table}


def headline_row(profile: str, rate: float, at_rate: dict[str, list[RunResult]]) -> dict[str, object]:
    """One (profile, rate): each system's medians and spreads, CPU seconds per process, and the flow's
    added latency."""
    row: dict[str, object] = {"profile": profile, "rate": rate}
    for system, rs in at_rate.items():
        p50 = median_and_spread([r.latency_ms.get("p50", float("inf")) for r in rs])
        p99 = median_and_spread([r.p99 for r in rs])
        cpu = {proc: statistics.median(r.cpu_s.get(proc, 0.0) for r in rs) for proc in rs[0].cpu_s}
        row[system] = {
            "runs": len(rs),
            "achieved_per_s": statistics.median(r.achieved_rate for r in rs),
            "all_out": all(r.decided >= 0.999 * r.sent for r in rs),
            "p50_ms": p50[0], "p50_spread": p50[1:], "p99_ms": p99[0], "p99_spread": p99[1:],
            "cpu_cores": {proc: round(c / (rs[0].config.duration_s + rs[0].config.warmup_s), 2)
                          for proc, c in cpu.items()},
        }  # fmt: skip
    flow, raw = row.get("fraud"), row.get("limit-raw")
    if isinstance(flow, dict) and isinstance(raw, dict):
        row["added_p50_ms"] = round(flow["p50_ms"] - raw["p50_ms"], 2)
        row["added_p99_ms"] = round(flow["p99_ms"] - raw["p99_ms"], 2)
    return row


HEADLINE_KEYS = tuple(
    f"{k}{suffix}"
    for k in ("p99_ms_at_20k", "p50_ms_at_20k", "added_p99_ms_at_20k", "added_p50_ms_at_20k")
    for suffix in ("", "_min", "_max")
) + ("sustained_events_per_s", "sustained_offered_events_per_s", "all_out_at_20k")


def headline_figures(table: list[dict[str, object]]) -> dict[str, float]:
    """The summary's fraud figures: the throughput profile's (the one that fits this box), each latency with
    its spread over the runs (``_min``/``_max``). ``sustained_offered_events_per_s`` is the highest rate
    offered with every event out and P99 < 1 s, ``sustained_events_per_s`` the rate decisions came out at
    then (a little under it: the span of arrivals includes the latency tail); neither can exceed the grid's
    top rate. ``all_out_at_20k`` says whether every run at 20k decided every event: a P99 of the events
    that came out says nothing about those that did not."""
    rows = [r for r in table if r["profile"] == "throughput" and isinstance(r.get("fraud"), dict)]
    out: dict[str, float] = {}
    kept = [r for r in rows if r["fraud"]["all_out"] and r["fraud"]["p99_ms"] < 1000]  # type: ignore[index]
    if kept:
        best = max(kept, key=lambda r: r["rate"])  # type: ignore[arg-type,return-value]
        out["sustained_offered_events_per_s"] = best["rate"]  # type: ignore[assignment]
        out["sustained_events_per_s"] = best["fraud"]["achieved_per_s"]  # type: ignore[index]
    at_20k = next((r for r in rows if r["rate"] == SUMMARY_RATE), None)
    if at_20k is not None:
        flow: dict[str, Any] = at_20k["fraud"]  # type: ignore[assignment]
        out["all_out_at_20k"] = int(flow["all_out"])
        for key in ("p99", "p50"):
            low, high = flow[f"{key}_spread"]
            out |= {f"{key}_ms_at_20k": flow[f"{key}_ms"], f"{key}_ms_at_20k_min": low, f"{key}_ms_at_20k_max": high}
        raw: dict[str, Any] | None = at_20k.get("limit-raw")  # type: ignore[assignment]
        if raw is not None:
            for key in ("p99", "p50"):  # the spread of the difference: its extremes over the paired medians
                out[f"added_{key}_ms_at_20k"] = at_20k[f"added_{key}_ms"]  # type: ignore[assignment]
                out[f"added_{key}_ms_at_20k_min"] = round(flow[f"{key}_spread"][0] - raw[f"{key}_spread"][1], 2)
                out[f"added_{key}_ms_at_20k_max"] = round(flow[f"{key}_spread"][1] - raw[f"{key}_spread"][0], 2)
    # a run that timed nothing has an infinite P99: its spread is not a number, and all_out_at_20k says why
    return {k: v for k, v in out.items() if math.isfinite(v)}


def bench_batch_sweep(args: argparse.Namespace, model: str, logs: Path) -> dict:
    runs = []
    for max_batch in (32, 256, 1024):
        for wait in (1.0, 5.0, 20.0):
            r = run_one(
                RunConfig("fraud", args.rate, max_batch=max_batch, max_wait_ms=wait, **_one_profile(args)),
                model,
                logs,
            )
            print(describe(r), flush=True)
            runs.append(r)
    best = min(runs, key=lambda r: (not r.sustained(), r.p99))
    return {
        "runs": {"fraud": runs},
        "best": {"max_batch": best.config.max_batch, "max_wait_ms": best.config.max_wait_ms, "p99": best.p99},
    }


def _one_profile(args: argparse.Namespace) -> dict[str, Any]:
    """What every run of a one-profile benchmark shares: its length, broker profile and ``--set`` variant."""
    return {"duration_s": args.duration, "profile": args.profiles[0], "env": dict(args.env)}


def bench_scaling(args: argparse.Namespace, model: str, logs: Path) -> dict:
    runs: dict[str, list[RunResult]] = {}
    for label, kw in (("1 process", {}), ("2 processes", {"processes": 2}), ("1 process, 2 threads", {"workers": 2})):
        runs[label] = sweep_rates("fraud", args.rates, model, logs, **_one_profile(args), **kw)
    limits = {k: max_sustainable(v) for k, v in runs.items()}
    return {"runs": runs, "max_sustainable_rate": limits}


def bench_per_event(args: argparse.Namespace, model: str, logs: Path) -> dict:
    runs = {
        "per-event (max_batch=1)": sweep_rates("fraud", args.rates, model, logs, max_batch=1, **_one_profile(args)),
        "micro-batched": sweep_rates("fraud", args.rates, model, logs, **_one_profile(args)),
    }
    return {"runs": runs, "max_sustainable_rate": {k: max_sustainable(v) for k, v in runs.items()}}


def bench_smoke(args: argparse.Namespace, model: str, logs: Path) -> dict:
    r = run_one(RunConfig("fraud", args.rate, warmup_s=1.0, **_one_profile(args)), model, logs)
    print(describe(r), flush=True)
    return {"runs": {"fraud": [r]}}


BENCHMARKS = {
    "headline": bench_headline,
    "batch-sweep": bench_batch_sweep,
    "scaling": bench_scaling,
    "per-event": bench_per_event,
    "smoke": bench_smoke,
}


def to_json(obj: object) -> object:
    if isinstance(obj, RunResult):
        out = asdict(replace(obj, config=replace(obj.config, hooks=[])))
        out["config"]["hooks"] = [(name, at_s) for name, at_s, _ in obj.config.hooks]
        return {**out, "sustained_p99_35ms": obj.sustained()}
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    return obj


def plot(report: dict, path: Path) -> None:
    """Latency percentiles against offered rate per system, and latency over time of the last run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    last = None
    for system, runs in report["runs"].items():
        rates = [r.config.rate for r in runs]
        for pct, style in (("p50", ":"), ("p99", "-")):
            ax1.plot(
                rates, [r.latency_ms.get(pct, float("nan")) for r in runs], style, marker="o", label=f"{system} {pct}"
            )
        if runs:
            last = runs[-1] if last is None or system == "fraud" else last
    ax1.axhline(TARGET_P99_MS, color="red", lw=0.8, label="35 ms target")
    ax1.set(
        xlabel="offered rate (events/s)",
        ylabel="end-to-end latency (ms)",
        yscale="log",
        title="Latency vs offered rate",
    )
    ax1.legend(fontsize=7)
    headline = _headline_run(report) or last
    if headline is not None and headline.latency_over_time:
        xs, ys = zip(*headline.latency_over_time, strict=True)
        ax2.plot(xs, ys, ",", alpha=0.6)
        ax2.set(
            xlabel="seconds into the run",
            ylabel="latency (ms)",
            yscale="log",
            title=f"{headline.config.system} at {headline.config.rate:.0f}/s: latency over time",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _headline_run(report: dict) -> RunResult | None:
    runs: list[RunResult] = report["runs"].get("fraud") or next(iter(report["runs"].values()), [])
    at_20k = [r for r in runs if r.config.rate == 20_000]
    return at_20k[0] if at_20k else (runs[-1] if runs else None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS))
    parser.add_argument(
        "--rates", type=lambda s: [float(x) for x in s.split(",")], default=[5000, 10000, 20000, 30000, 40000]
    )
    parser.add_argument("--rate", type=float, default=20_000, help="offered rate for single-rate benchmarks")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (after warm-up)")
    parser.add_argument("--out", type=Path, default=REPORTS)
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the input and output topics")
    parser.add_argument("--profiles", type=broker_profiles, default=None,
                        help="broker profiles (operators/kafka/connection.py): the headline compares several "
                             "(default latency,throughput,kafka), the others run one (default latency)")  # fmt: skip
    parser.add_argument("--systems", type=lambda s: s.split(","), default=["limit-raw", "fraud"],
                        help="headline: systems per profile and rate (also limit-bytewax)")  # fmt: skip
    parser.add_argument("--runs", type=int, default=3, help="headline: runs per system and rate (figures: medians)")
    parser.add_argument("--label", default="", help="a name for this variant in the report file")
    parser.add_argument("--no-record", action="store_true", help="leave summary.json alone")
    add_variant_option(parser, FraudSettings)
    args = parser.parse_args(argv)
    if args.profiles is None:
        args.profiles = ["latency", "throughput", "kafka"] if args.benchmark == "headline" else ["latency"]
    elif args.benchmark != "headline" and len(args.profiles) != 1:
        parser.error(f"--profiles: {args.benchmark} runs one broker profile (the headline compares several)")
    logs = PROJECT_ROOT / ".stack" / "bench" / args.benchmark
    settings = FraudSettings.from_env()
    ensure_trained(settings.model_path)
    model = settings.model_path
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    global DEFAULT_PARTITIONS
    DEFAULT_PARTITIONS = args.partitions
    report = BENCHMARKS[args.benchmark](args, model, logs)
    report = {
        "benchmark": args.benchmark,
        "started": started,
        "machine": _machine(),
        "command": "python -m perf.bench " + " ".join(sys.argv[1:] if argv is None else argv),
        **report,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = report_stem(args.benchmark, args.label, args.out)
    stem.with_suffix(".json").write_text(json.dumps(to_json(report), indent=1))
    plot(report, stem.with_suffix(".png"))
    print(f"report: {stem}.json and .png")
    return 0


def _machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "note": "broker, Redis, load generator, collector and flow all share this machine",
    }


if __name__ == "__main__":
    sys.exit(main())
