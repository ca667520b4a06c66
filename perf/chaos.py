"""The large chaos benchmark: ``python -m perf.chaos --events 1000000 --kills 10``.

Sends the input open-loop while SIGKILLing the exactly-once fraud flow at random
moments (resuming from its recovery store each time), drains the rest, runs a
crash-free reference over the same input, and reports lost / duplicated /
differing decisions. Writes ``perf/reports/chaos-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace

import psutil

from models.train_fraud import ensure_trained
from perf.summary import MIN_RUNS, broker_profile, record_unless, report_stem, why_not_recorded
from sluice.harness.chaos import chaos_run, judge, reference_run, start_sending
from sluice.local.stack import PROJECT_ROOT, LocalStack
from sluice.processes import free_port
from sluice.settings import FraudSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--rate", type=float, default=8_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=99)
    parser.add_argument("--profile", type=broker_profile, default="throughput", help="broker profile of every client (the local broker"
                        " keeps up with 1M stored events only with throughput)")  # fmt: skip
    args = parser.parse_args(argv)
    ensure_trained(FraudSettings().model_path)
    work = PROJECT_ROOT / ".stack" / "chaos"
    shutil.rmtree(work, ignore_errors=True)  # a fresh recovery store and logs: an old run's would be resumed
    base = replace(FraudSettings(), topic_partitions=args.partitions, broker_profile=args.profile)
    stack = LocalStack(free_port(), free_port(), work / "stack", topics=base.topics()).start()
    settings = replace(base, brokers=stack.brokers, redis_url=stack.redis_url)
    phases: dict[str, dict[str, float]] = {}
    broker = psutil.Process(stack.procs["tansu"].pid)
    try:
        with phase(phases, "send_and_kill_then_drain", broker):
            sender = start_sending(settings, args.seed, args.events, args.rate)
            kills = chaos_run(
                settings, work, sender, [{"processes": args.processes}], args.kills, args.seed, timeout_s=3600
            )
        with phase(phases, "reference_run", broker):
            reference = reference_run(settings, work, timeout_s=3600)
        with phase(phases, "compare", broker):
            verdict = judge(settings, reference, kills, args.events)
    finally:
        stack.stop()
    report = {
        "benchmark": "chaos",
        "command": "python -m perf.chaos " + " ".join(sys.argv[1:] if argv is None else argv),
        "events": args.events,
        "send_rate": args.rate,
        "processes": args.processes,
        "profile": args.profile,
        "chaos_wall_s": phases["send_and_kill_then_drain"]["wall_s"],
        "phases": phases,
        "verdict": asdict(verdict),
        "exactly_once": verdict.exactly_once,
    }
    out = report_stem("chaos", "" if args.processes == 1 else f"{args.processes}proc").with_suffix(".json")
    out.write_text(json.dumps(report, indent=1))
    figures = {"lost": verdict.missing, "duplicated": verdict.duplicated, "differing": verdict.differing}
    # the headline runs: 1,000,000 events and 10 kills in one process, 300,000 and 10 in two; smaller ones
    # are checks, not figures (a run is deterministic in its verdict: one is the figure)
    full = args.events >= (1_000_000 if args.processes == 1 else 300_000) and kills >= 10
    suffix = "" if args.processes == 1 else f"_{args.processes}proc"
    reason = why_not_recorded(MIN_RUNS, smaller_run=not full, processes=args.processes if args.processes > 2 else 0)
    record_unless(reason, "chaos", {f"{k}{suffix}": v for k, v in {"events": args.events, "kills": kills,
                                                                  **figures}.items()})  # fmt: skip
    print(json.dumps(report, indent=1))
    return 0 if verdict.exactly_once else 1


@contextmanager
def phase(phases: dict[str, dict[str, float]], name: str, broker: psutil.Process) -> Iterator[None]:
    """Wall time and CPU of a phase: the flow processes that ended in it (waited-for children), this
    process (sending, reading, comparing) and the broker."""
    wall, me = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
    children, tansu = resource.getrusage(resource.RUSAGE_CHILDREN), sum(broker.cpu_times()[:2])
    yield
    me2, children2 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    phases[name] = {
        "wall_s": round(time.monotonic() - wall, 1),
        "flow_cpu_s": round(children2.ru_utime + children2.ru_stime - children.ru_utime - children.ru_stime, 1),
        "harness_cpu_s": round(me2.ru_utime + me2.ru_stime - me.ru_utime - me.ru_stime, 1),
        "broker_cpu_s": round(sum(broker.cpu_times()[:2]) - tansu, 1),
    }
    print(f"{name}: {phases[name]}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
