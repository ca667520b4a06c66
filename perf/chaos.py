"""The large chaos benchmark: ``python -m perf.chaos --events 1000000 --kills 10``.

Sends the input open-loop while SIGKILLing the exactly-once fraud flow at random
moments (resuming from its recovery store each time), drains the rest, runs a
crash-free reference over the same input, and reports lost / duplicated /
differing decisions. Writes ``perf/reports/chaos-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace

from models.train_fraud import ensure_trained
from perf.summary import REPORTS, record
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
    args = parser.parse_args(argv)
    ensure_trained(FraudSettings().model_path)
    work = PROJECT_ROOT / ".stack" / "chaos"
    base = replace(FraudSettings(), topic_partitions=args.partitions)
    stack = LocalStack(free_port(), free_port(), work / "stack", topics=base.topics()).start()
    settings = replace(base, brokers=stack.brokers, redis_url=stack.redis_url)
    try:
        started = time.monotonic()
        sender = start_sending(settings, args.seed, args.events, args.rate)
        kills = chaos_run(
            settings, work, sender, [{"processes": args.processes}], args.kills, args.seed, timeout_s=3600
        )
        chaos_s = time.monotonic() - started
        reference = reference_run(settings, work, timeout_s=3600)
        verdict = judge(settings, reference, kills)
    finally:
        stack.stop()
    report = {
        "benchmark": "chaos",
        "command": "python -m perf.chaos " + " ".join(sys.argv[1:] if argv is None else argv),
        "events": args.events,
        "send_rate": args.rate,
        "chaos_wall_s": round(chaos_s, 1),
        "verdict": asdict(verdict),
        "exactly_once": verdict.exactly_once,
    }
    out = REPORTS / f"chaos-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps(report, indent=1))
    record(
        "chaos",
        {
            "events": args.events,
            "kills": kills,
            "lost": verdict.missing,
            "duplicated": verdict.duplicated,
            "differing": verdict.differing,
        },
    )
    print(json.dumps(report, indent=1))
    return 0 if verdict.exactly_once else 1


if __name__ == "__main__":
    sys.exit(main())
