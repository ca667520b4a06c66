"""Checkpoints and replays: ``sluice replay {list,backup,run}``.

* ``list DIR``: the recovery store's executions, committed epoch and checkpoints
  (epoch, time, input offsets).
* ``backup DIR DEST``: a consistent copy of the store (safe while the flow runs).
* ``run --output-topic T (--from-backup DEST | --from-offset N | --from-time EPOCH_MS)``:
  a backfill into ``T`` (and ``T-dlq``), reading to the current end of the input
  and then stopping. It never touches the live flow's output, recovery store or
  transactional ids: a backup is copied to a scratch directory first.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from operators.kafka.admin import create_topics
from sluice.processes import FlowProcesses, init_recovery
from sluice.settings import FraudSettings
from state.checkpoints import backup, summarize

DEFAULT_FLOW = "dataflows.fraud:from_env()"


def cmd_list(args: argparse.Namespace) -> int:
    s = summarize(Path(args.dir), args.input_step)
    print(f"{args.dir}: {s.partitions} partition(s), committed epoch {s.committed_epoch}")
    for ex, workers, resume, started in s.executions:
        print(f"  execution {ex}: {workers} worker(s), resumed at epoch {resume}, started {started}")
    for cp in s.checkpoints:
        offsets = " ".join(f"{k}={v}" for k, v in cp.offsets.items())
        print(f"  epoch {cp.epoch:>6}  {cp.written_at}  {offsets}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    files = backup(Path(args.dir), Path(args.dest))
    print(f"backed up {len(files)} partition(s) to {args.dest}")
    return 0


def replay_env(settings: FraudSettings, output_topic: str, start_from: str, exactly_once: bool) -> dict[str, str]:
    """Environment for a backfill flow: its own output topics and transactional ids, stop at the end
    (no metrics server: the live flow's port is taken, and a backfill's alarms go to its own topic)."""
    return {
        **settings.to_env(),
        "SLUICE_DECISIONS_TOPIC": output_topic,
        "SLUICE_DLQ_TOPIC": f"{output_topic}-dlq",
        "SLUICE_ALARMS_TOPIC": f"{output_topic}-alarms",
        "SLUICE_METRICS_PORT": "0",
        "SLUICE_TRANSACTIONAL_ID_PREFIX": f"replay-{output_topic}",
        "SLUICE_START_FROM": start_from,
        "SLUICE_STOP_AT_END": "1",
        "SLUICE_EXACTLY_ONCE": "1" if exactly_once else "0",
    }


def cmd_run(args: argparse.Namespace) -> int:
    settings = FraudSettings.from_env()
    if args.output_topic in (settings.decisions_topic, settings.dlq_topic):
        print("error: a replay must write to its own topic, not the live flow's", file=sys.stderr)
        return 2
    start = "earliest"
    if args.from_offset is not None:
        start = f"offset:{args.from_offset}"
    elif args.from_time is not None:
        start = f"time:{args.from_time}"
    partitions = settings.topic_partitions
    create_topics(
        settings.connection(),
        {args.output_topic: partitions, f"{args.output_topic}-dlq": 1, f"{args.output_topic}-alarms": 1},
    )
    scratch = Path(tempfile.mkdtemp(prefix="sluice-replay-"))
    try:
        recovery: Path | None = None
        if args.from_backup:
            recovery = scratch / "recovery"
            shutil.copytree(args.from_backup, recovery)
        elif args.exactly_once:
            recovery = scratch / "recovery"
            init_recovery(recovery)
        flow = FlowProcesses(
            args.flow,
            replay_env(settings, args.output_topic, start, args.exactly_once),
            workers=args.workers,
            recovery_dir=recovery,
        ).start()
        codes = flow.wait(timeout_s=args.timeout)
        print(f"replay finished into {args.output_topic} (exit codes {codes})")
        return max(codes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``list``, ``backup`` and ``run`` under ``parser`` (``sluice replay ...``)."""
    sub = parser.add_subparsers(dest="replay_command", required=True, metavar="{list,backup,run}")
    p = sub.add_parser("list", help="show a recovery store's executions and checkpoints")
    p.add_argument("dir")
    p.add_argument("--input-step", default="transactions", help="suffix of the input step id")
    p.set_defaults(fn=cmd_list)
    p = sub.add_parser("backup", help="consistent copy of a recovery store (safe while the flow runs)")
    p.add_argument("dir")
    p.add_argument("dest")
    p.set_defaults(fn=cmd_backup)
    p = sub.add_parser("run", help="backfill into a separate topic, reading to the current end of the input")
    p.add_argument("--output-topic", required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--from-backup")
    src.add_argument("--from-offset", type=int)
    src.add_argument("--from-time", type=int, help="epoch milliseconds (Kafka record timestamp)")
    p.add_argument("--flow", default=DEFAULT_FLOW)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--exactly-once", action="store_true")
    p.add_argument("--timeout", type=float, default=3600)
    p.set_defaults(fn=cmd_run)
