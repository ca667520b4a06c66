"""Checkpoints and replays: ``sluice replay {list,backup,run}``.

* ``list DIR``: the recovery store's executions, committed epoch and checkpoints
  (epoch, time, input offsets).
* ``backup DIR DEST``: a consistent copy of the store (safe while the flow runs).
* ``run --output-topic T (--from-backup DEST | --from-offset N | --from-time EPOCH_MS)``:
  a backfill into ``T`` (and ``T-dlq``, ``T-alarms``, ``T-shadow`` and, when the
  live flow writes them, ``T-features`` and ``T-rationales``), reading to the current end of the input
  and then stopping. It never touches the live flow's output, recovery store or
  transactional ids: a backup is copied to a scratch directory first.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from operators.kafka.admin import TopicsMissing, check_broker, create_topics, end_offsets
from sluice.local.stack import workflow_topics
from sluice.processes import FlowProcesses, FlowTimedOut, init_recovery
from sluice.settings import FraudSettings
from state.checkpoints import backup, forget_sink_state, summarize

DEFAULT_FLOW = "dataflows.fraud:from_env()"


def cmd_list(args: argparse.Namespace) -> int:
    s = summarize(Path(args.dir), args.input_step)
    print(f"{args.dir}: {s.partitions} partition(s), committed epoch {s.committed_epoch}")
    for ex, workers, resume, started in s.executions:
        print(f"  execution {ex}: {workers} worker(s), resumed at epoch {resume}, started {started}")
    for cp in s.checkpoints:
        offsets = " ".join(f"{k}={v}" for k, v in cp.offsets.items())
        # a partition may have written an epoch the others have not: a resume starts from the committed one
        committed = s.committed_epoch
        later = "  (not committed on every partition yet)" if committed is not None and cp.epoch > committed else ""
        print(f"  epoch {cp.epoch:>6}  {cp.written_at}  {offsets}{later}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    files = backup(Path(args.dir), Path(args.dest))
    print(f"backed up {len(files)} partition(s) to {args.dest}")
    return 0


# every topic the fraud flow writes besides its decisions, and the suffix of the backfill's own copy
_SIDE_TOPICS = {
    "dlq_topic": "dlq",
    "alarms_topic": "alarms",
    "shadow_topic": "shadow",
    "features_topic": "features",
    "rationales_topic": "rationales",
}


def replay_settings(settings: FraudSettings, output_topic: str) -> FraudSettings:
    """The live flow's settings with every output redirected: decisions to ``output_topic``, each other
    output (dead letters, alarms, shadow decisions, the feature log, rationales) to ``<output_topic>-<kind>``;
    an output the live flow has switched off stays off.

    >>> s = replay_settings(FraudSettings(), "backfill")
    >>> s.decisions_topic, s.dlq_topic, s.features_topic, s.transactions_topic
    ('backfill', 'backfill-dlq', 'backfill-features', 'transactions')
    """
    redirected: dict[str, Any] = {
        name: f"{output_topic}-{kind}" for name, kind in _SIDE_TOPICS.items() if getattr(settings, name)
    }
    return replace(settings, decisions_topic=output_topic, **redirected)


def replay_env(replayed: FraudSettings, start_from: str, exactly_once: bool) -> dict[str, str]:
    """Environment for a backfill flow with ``replayed`` settings (:func:`replay_settings`): its own transactional
    ids, stop at the end (no metrics server: the live flow's port is taken)."""
    return {
        **replayed.to_env(),
        "SLUICE_METRICS_PORT": "0",
        "SLUICE_TRANSACTIONAL_ID_PREFIX": f"replay-{replayed.decisions_topic}",
        "SLUICE_START_FROM": start_from,
        "SLUICE_STOP_AT_END": "1",
        "SLUICE_EXACTLY_ONCE": "1" if exactly_once else "0",
    }


def _not_negative(text: str) -> int:
    """An argparse type: a whole number from 0 (Kafka reads -1 and -2 as "the end" and "the beginning")."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text} is not a whole number from 0")
    return int(text)


def _records_in(settings: FraudSettings, topic: str) -> int:
    """How many records ``topic`` holds (0 when it does not exist)."""
    try:
        return sum(end_offsets(settings.connection(), topic).values())
    except TopicsMissing:
        return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.flow.partition(":")[0] != DEFAULT_FLOW.partition(":")[0]:
        # only the fraud flow's outputs are redirected: another flow would write into its live topics and Redis
        print(f"sluice: error: --flow must be a factory of dataflows.fraud (got {args.flow})", file=sys.stderr)
        return 2
    settings = FraudSettings.from_env()
    replayed = replay_settings(settings, args.output_topic)
    outputs = set(replayed.output_topics())
    taken = sorted(outputs & set(workflow_topics()))  # any flow's topic: fraud's labels, the review audit, ...
    if taken:
        print(f"sluice: error: a replay writes to topics of its own; {', '.join(taken)} belongs to a flow",
              file=sys.stderr)  # fmt: skip
        return 2
    check_broker(settings.connection(), settings.connect_timeout_s)  # after the checks that need no broker
    held = {t: n for t in sorted(outputs) if (n := _records_in(settings, t))}
    if held:  # a second backfill into the same topic would append the same decisions again
        print(f"sluice: error: {', '.join(f'{t} holds {n:,} records' for t, n in held.items())}: "
              "replay into a new --output-topic", file=sys.stderr)  # fmt: skip
        return 2
    start = "earliest"
    if args.from_offset is not None:
        start = f"offset:{args.from_offset}"
    elif args.from_time is not None:
        start = f"time:{args.from_time}"
    create_topics(settings.connection(), {t: n for t, n in replayed.topics().items() if t in outputs})
    scratch = Path(tempfile.mkdtemp(prefix="sluice-replay-"))
    try:
        recovery: Path | None = None
        if args.from_backup:
            recovery = scratch / "recovery"
            shutil.copytree(args.from_backup, recovery)
            forget_sink_state(recovery, set(settings.output_topics()))  # the backfill's sink writes elsewhere
        elif args.exactly_once:
            recovery = scratch / "recovery"
            init_recovery(recovery)
        logs = scratch / "logs"
        flow = FlowProcesses(
            args.flow,
            replay_env(replayed, start, args.exactly_once),
            workers=args.workers,
            recovery_dir=recovery,
            log_dir=logs,
        ).start()
        try:
            codes = flow.wait(timeout_s=args.timeout)
        except FlowTimedOut as exc:
            failed, code = f"replay did not finish: {exc} (--timeout)", 1
        else:
            if all(c == 0 for c in codes):
                print(f"replay finished into {args.output_topic}")
                return 0
            failed, code = f"replay failed (exit codes {codes})", max(abs(c) for c in codes)
        print(f"{failed}; the end of its log:", file=sys.stderr)
        for log_file in sorted(logs.glob("*.log")):
            print("".join(log_file.read_text(errors="replace").splitlines(keepends=True)[-20:]), file=sys.stderr)
        return code
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``list``, ``backup`` and ``run`` under ``parser`` (``sluice replay ...``)."""
    sub = parser.add_subparsers(dest="replay_command", required=True, metavar="{list,backup,run}")
    p = sub.add_parser("list", help="show a recovery store's executions and checkpoints")
    p.add_argument("dir", help="the recovery folder (the flow's -r)")
    p.add_argument("--input-step", default="transactions", help="suffix of the input step id")
    p.set_defaults(fn=cmd_list)
    p = sub.add_parser("backup", help="consistent copy of a recovery store (safe while the flow runs)")
    p.add_argument("dir", help="the recovery folder (the flow's -r)")
    p.add_argument("dest", help="where the copy goes (created)")
    p.set_defaults(fn=cmd_backup)
    p = sub.add_parser("run", help="backfill into a separate topic, reading to the current end of the input")
    p.add_argument(
        "--output-topic", required=True, help="the backfill's decisions topic (its other outputs are <T>-dlq, ...)"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--from-backup", help="resume the flow's state and input offsets from this backup")
    src.add_argument(
        "--from-offset", type=_not_negative, help="start every input partition at this offset, with empty state"
    )
    src.add_argument(
        "--from-time", type=_not_negative, help="epoch milliseconds (Kafka record timestamp), with empty state"
    )
    p.add_argument("--flow", default=DEFAULT_FLOW, help="the fraud flow's factory to run (bytewax.run import string)")
    p.add_argument("--workers", type=int, default=1, help="worker threads")
    p.add_argument("--exactly-once", action="store_true", help="transactional output (read it read_committed)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the backfill to finish")
    p.set_defaults(fn=cmd_run)
