"""The fraud flow without Kafka: its own CPU per event, and proof that a change left its output alone.

    python -m perf.fraud_inprocess --events 60000 --dump before.out      # on the old code
    python -m perf.fraud_inprocess --events 60000 --compare before.out   # on the new: exit 1 if any record differs

Runs the real :func:`dataflows.fraud.build_flow` in this process (``bytewax.testing.run_main``, one
worker) with the Kafka source and sink replaced by in-memory ones, against a Redis of its own (a
:class:`sluice.local.stack.LocalStack`) loaded with the generator's card profiles. The input is the
generator's stream (seed 3, 20,000 cards, 0.2% malformed records), the same every run, with every
record's ``sent_at`` fixed, so two runs of the same code write the same records.

Kafka in and out costs about 4 µs per event by itself (``perf.drain`` on ``perf.limit_bytewax``);
without it, a change's effect on the flow's own work is easier to see, and the harness also says how
many model calls each stage made (micro-batch sizes decide the sequence model's cost).

``--dump`` writes every output record (topic, key, value, headers) sorted, with the wall-clock
fields (``decided_at``, ``written_at``) taken out; ``--compare`` checks a run against such a file.
A development tool: it writes no summary figure (the drain benchmark's are the recorded ones).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main

from dataflows import fraud
from dataflows.runtime import tune_gc
from models.synthetic_transactions import TransactionStream
from operators.kafka.records import KafkaRecord, SourceRecord
from sluice.local.profiles import load_profiles
from sluice.local.stack import LocalStack
from sluice.local.transactions import event_records
from sluice.processes import free_port
from sluice.settings import FraudSettings

WALL_CLOCK_FIELDS = ("decided_at", "written_at")
SENT_AT_MS = 1.7e12  # every record's send time: fixed, so the records do not depend on when the run was


def input_records(settings: FraudSettings, events: int, partitions: int = 8) -> list[SourceRecord]:
    """``events`` transaction records as a consumer would see them (round-robin over ``partitions``)."""
    out: list[SourceRecord] = []
    stream = event_records(TransactionStream(3, n_cards=20_000), settings, malformed_rate=0.002)
    for prepared in stream:
        for rec in prepared(SENT_AT_MS):
            if rec.topic == settings.transactions_topic:
                out.append(SourceRecord(rec.topic, len(out) % partitions, len(out), rec.key, rec.value))
        if len(out) >= events:
            return out[:events]
    return out


def comparable(rec: KafkaRecord) -> str:
    """A record as one line, without its wall-clock fields (the same code writes the same lines)."""
    value = rec.value or b""
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:  # a dead letter's payload, as it came
        body = None
    if isinstance(body, dict) and any(f in body for f in WALL_CLOCK_FIELDS):
        for f in WALL_CLOCK_FIELDS:
            body.pop(f, None)
        value = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return repr((rec.topic, rec.key or b"", value, list(rec.headers)))


class _Collect(StatelessSinkPartition[KafkaRecord]):
    def __init__(self, rows: list[str] | None, counts: Counter[str]) -> None:
        self.rows, self.counts = rows, counts

    def write_batch(self, items: list[KafkaRecord]) -> None:
        for rec in items:
            self.counts[rec.topic] += 1
        if self.rows is not None:
            self.rows.extend(comparable(rec) for rec in items)


class MemorySink(DynamicSink[KafkaRecord]):
    """Counts the records per topic and, when ``keep``, keeps them comparable."""

    def __init__(self, keep: bool) -> None:
        self.rows: list[str] | None = [] if keep else None
        self.counts: Counter[str] = Counter()

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Collect:
        return _Collect(self.rows, self.counts)


def differences(before: list[str], after: list[str], show: int = 3) -> list[str]:
    """What differs between two dumps (empty when they hold the same records).

    >>> differences(["a", "b"], ["b", "a"])
    []
    >>> differences(["a", "b"], ["a", "c"])
    ['1 record(s) only before, 1 only after; e.g. before b', 'after: c']
    """
    only_before, only_after = Counter(before) - Counter(after), Counter(after) - Counter(before)
    if not only_before and not only_after:
        return []
    lines = [
        f"{sum(only_before.values())} record(s) only before, {sum(only_after.values())} only after"
        + (f"; e.g. before {next(iter(only_before))}" if only_before else "")
    ]
    lines += [f"after: {r}" for r in list(only_after)[:show]]
    return lines


def run(settings: FraudSettings, records: list[SourceRecord], keep: bool) -> tuple[dict[str, Any], MemorySink]:
    """One run of the flow over ``records``: CPU per event, events/s, model calls per stage."""
    calls: dict[str, list[int]] = {"stage1": [], "stage2": []}
    stage1, stage2 = fraud.stage1_batch, fraud.stage2_batch

    def counted1(cascade: Any, version: Any, items: list[Any], *a: Any, **kw: Any) -> Any:
        calls["stage1"].append(len(items))
        return stage1(cascade, version, items, *a, **kw)

    def counted2(served: Any, items: list[Any], *a: Any, **kw: Any) -> Any:
        calls["stage2"].append(len(items))
        return stage2(served, items, *a, **kw)

    sink = MemorySink(keep)
    fraud.stage1_batch, fraud.stage2_batch = counted1, counted2  # build_flow binds them now
    try:
        flow = fraud.build_flow(settings, source=TestingSource(records, batch_size=500), sink=sink)
    finally:
        fraud.stage1_batch, fraud.stage2_batch = stage1, stage2
    tune_gc(settings)
    wall, cpu = time.perf_counter(), time.process_time()
    run_main(flow)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    figures: dict[str, Any] = {
        "events": len(records),
        "cpu_us_per_event": round(1e6 * cpu / len(records), 2),
        "events_per_s": round(len(records) / wall),
        "records_out": dict(sink.counts),
    }
    for stage, sizes in calls.items():
        figures[f"{stage}_calls"] = len(sizes)
        figures[f"{stage}_mean_batch"] = round(sum(sizes) / len(sizes), 1) if sizes else 0
    return figures, sink


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.fraud_inprocess", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--dump", type=Path, help="write every output record (comparable) to this file")
    parser.add_argument("--compare", type=Path, help="exit 1 unless the output equals this --dump file")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a FraudSettings field")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sluice-inprocess-") as state:
        stack = LocalStack(free_port(), free_port(), Path(state)).start()
        try:
            overrides = dict(kv.split("=", 1) for kv in args.set)
            settings = FraudSettings.from_env(
                {"SLUICE_REDIS_URL": stack.redis_url, "SLUICE_RATIONALE_MODE": "template"}
                | {f"SLUICE_{k.upper()}": v for k, v in overrides.items()}
            )
            load_profiles(settings, 7, 20_000)
            figures, sink = run(settings, input_records(settings, args.events), keep=bool(args.dump or args.compare))
        finally:
            stack.stop()
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    rows = sorted(sink.rows or [])
    if args.dump:
        args.dump.write_bytes(orjson.dumps(rows))
        print(f"{len(rows)} records written to {args.dump}")
    if args.compare:
        problems = differences(orjson.loads(args.compare.read_bytes()), rows)
        for line in problems:
            print(line)
        print("output differs" if problems else f"output identical: {len(rows)} records")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
