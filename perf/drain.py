"""Drain benchmark: a backlog of N events, then the flow's own throughput (no load generator running).

``python -m perf.drain --count 200000 [--flow dataflows.fraud:flow]``: fills the input
topic first, then times how long the flow takes to decide all of it, and the
flow process's CPU time per event. Isolates the flow's per-event cost from the
sender's and the collector's.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import orjson
import psutil
from confluent_kafka import Consumer, Producer, TopicPartition

from sluice.collector import poll_batch
from sluice.demo import ensure_model
from sluice.flowproc import FlowProcesses, init_recovery
from sluice.generator import TransactionStream, event_records
from sluice.loadgen import send_open_loop
from sluice.profiles import load_profiles
from sluice.settings import REPO_ROOT, Settings
from sluice.stack import LocalStack, default_topics, free_port


class OutputCounter:
    """Counts records arriving on ``topic`` (reading them: Tansu 0.6 lists high watermarks wrong)."""

    def __init__(self, brokers: str, topic: str, partitions: int) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": brokers,
                "group.id": "drain",
                "fetch.wait.max.ms": 20,
                "isolation.level": "read_committed",
            }
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--flow", default="dataflows.fraud:flow")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--exactly-once", action="store_true", help="transactional sink, recovery with -s 1")
    args = parser.parse_args(argv)
    ensure_model(Settings())
    base = replace(Settings(), topic_partitions=args.partitions)
    stack = LocalStack(free_port(), free_port(), REPO_ROOT / ".stack" / "drain", topics=default_topics(base)).start()
    settings = replace(base, brokers=stack.brokers, redis_url=stack.redis_url, exactly_once=args.exactly_once)
    recovery = None
    if args.exactly_once:
        recovery = Path(stack.state_dir) / "recovery"
        init_recovery(recovery)
    flow = FlowProcesses(args.flow, settings.to_env(), log_dir=Path(stack.state_dir), recovery_dir=recovery)
    try:
        load_profiles(settings, 7, 20_000)
        producer = Producer(settings.kafka_config(**{"linger.ms": 5}))
        send_open_loop(producer, event_records(TransactionStream(3, n_cards=20_000), settings), 1e9, args.count)
        del producer
        counter = OutputCounter(settings.brokers, settings.decisions_topic, args.partitions)
        flow.start()
        proc = psutil.Process(flow.pids[0])
        samples: list[tuple[float, float]] = []  # (epoch ms, flow CPU seconds)
        while counter.poll() < args.count * 0.99:
            samples.append((time.time() * 1000, sum(proc.cpu_times()[:2])))
        samples.append((time.time() * 1000, sum(proc.cpu_times()[:2])))
        cpu_at_first = next(c for t, c in samples if t >= counter.first_ms)
        cpu_at_last = next((c for t, c in samples if t >= counter.last_ms), samples[-1][1])
        span_s = (counter.last_ms - counter.first_ms) / 1000
        mode = "exactly-once" if args.exactly_once else "at-least-once"
        print(
            f"{args.flow} ({mode}): {counter.count} decisions in {span_s:.2f}s = {counter.count / span_s:,.0f}/s; "
            f"flow CPU {1e6 * (cpu_at_last - cpu_at_first) / counter.count:.1f} us/event"
        )
    finally:
        flow.stop()
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
