"""The ``sluice`` command: run flows, the local stack, demos, data, replays and models.

    sluice run fraud -- -r .recovery -s 1 -b 0     # python -m bytewax.run "dataflows.fraud:from_env()" ...
    sluice stack up | down | topics
    sluice demo fraud | assistant | personalize | review
    sluice produce transactions | profiles | corpus | shop
    sluice replay list | backup | run
    sluice train fraud [--from-log]
    sluice model list | promote | rollback | shadow | unshadow | shadow-report
    sluice settings fraud [--markdown]
    sluice review serve | add-reviewer | policy
    sluice audit verify --topic audit
    sluice dlq summary | list | redrive --reason TEXT
    sluice top [PORT|HOST:PORT|URL ...]
    sluice deploy render | topics

Also ``python -m sluice``. Every subcommand has ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dataflows.command_line import BytewaxCommandLine
from sluice.processes import init_recovery
from sluice.settings import (
    URL_PASSWORD,
    AssistantSettings,
    FlowSettings,
    FraudSettings,
    PersonalizeSettings,
    ReviewSettings,
    SettingsError,
    is_secret,
    settings_table,
    update_readme_tables,
)
from state.checkpoints import store_partitions

FLOWS: dict[str, tuple[str, type[FlowSettings]]] = {
    "fraud": ("dataflows.fraud:from_env()", FraudSettings),
    "assistant": ("dataflows.assistant:from_env()", AssistantSettings),
    "personalize": ("dataflows.personalize:from_env()", PersonalizeSettings),
    "review": ("dataflows.review:from_env()", ReviewSettings),
}

Handler = Callable[[argparse.Namespace], int]


def _lazy(module: str, function: str = "run") -> Handler:
    """A handler that imports its module only when called (``sluice --help`` stays instant)."""

    def call(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(module), function)(args))

    return call


def _number(
    kind: type[int] | type[float], low: float, high: float = float("inf"), low_open: bool = False
) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` in [low, high] (``(low, high]`` when ``low_open``), one line if not.

    >>> _number(float, 0.0, low_open=True)("250")
    250.0
    >>> _number(float, 0.0, 1.0)("2")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 2 is not from 0 to 1
    """

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        inside = (value > low if low_open else value >= low) and value <= high and math.isfinite(value)
        if not inside:
            where = f"more than {low:g}" if low_open and high == float("inf") else (
                f"at least {low:g}" if high == float("inf") else f"from {low:g} to {high:g}")  # fmt: skip
            raise argparse.ArgumentTypeError(f"{text} is not {where}")
        return value

    return parse


POSITIVE = _number(float, 0.0, low_open=True)
COUNT = _number(int, 0)
AT_LEAST_ONE = _number(int, 1)
SHARE = _number(float, 0.0, 1.0)


def _transaction_arguments(
    parser: argparse.ArgumentParser, count: int, rate: float, malformed: float, label_delay_s: float
) -> None:
    parser.add_argument("--rate", type=POSITIVE, default=rate, help="events per second, open-loop")
    parser.add_argument("--count", type=COUNT, default=count)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cards", type=_number(int, 1), default=20_000)
    parser.add_argument("--malformed-rate", type=SHARE, default=malformed, help="share of broken payloads (DLQ)")
    parser.add_argument(
        "--label-delay-s", type=float, default=label_delay_s, help="chargebacks arrive this long after their event"
    )


def _prepare_recovery(folder: str) -> None:
    """A recovery folder that does not hold a store yet gets one (1 partition): bytewax.run would stop
    with a traceback instead. A file where the folder should be is one line."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise SystemExit(f"sluice: error: the recovery directory {folder} is a file")
    if not store_partitions(path):
        init_recovery(path, 1)
        print(f"sluice: {folder}: a new recovery store, 1 partition "
              f"(more: python -m bytewax.recovery {folder} N, before the first run)", file=sys.stderr)  # fmt: skip


def cmd_run(args: argparse.Namespace) -> int:
    """Replace this process with ``python -m bytewax.run <flow factory> <bytewax args>``."""
    import_str = FLOWS[args.flow][0]
    extra = [a for a in args.bytewax_args if a != "--"]
    folder = BytewaxCommandLine.parse(extra, os.environ).recovery_dir
    if folder is not None:
        _prepare_recovery(folder)
    argv = [sys.executable, "-m", "bytewax.run", import_str, *extra]
    os.execv(sys.executable, argv)
    return 0  # not reached


def cmd_read(args: argparse.Namespace) -> int:
    """``sluice read TOPIC``: the last ``--last`` records of every partition, merged by time, the newest
    ``--last`` printed. Reads to each partition's real end (Tansu lists a high watermark short of it)."""
    from operators.kafka.admin import newest_records

    conn = FlowSettings.from_env().connection()
    messages = [m for records in newest_records(conn, args.topic, args.last).values() for m in records]
    newest = sorted(messages, key=lambda m: (m.timestamp()[1], m.partition() or 0, m.offset() or 0))[-args.last :]
    for m in newest:
        value = (m.value() or b"").decode(errors="replace")
        print(f"{(m.key() or b'').decode(errors='replace')}\t{value}" if args.keys else value)
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    if args.write_readme:
        path = Path(args.write_readme)
        path.write_text(update_readme_tables(path.read_text()))
        print(f"settings tables in {path} regenerated")
        return 0
    cls = FLOWS[args.flow][1]
    if args.markdown:
        print(settings_table(cls, None if cls is FlowSettings else FlowSettings))
        return 0
    settings = cls.from_env()
    for name, value in settings.to_env().items():
        print(f"{name}={shown_value(name, value, cls)}")
    return 0


def shown_value(name: str, value: str, cls: type[FlowSettings] = FlowSettings) -> str:
    """A setting as `sluice settings` prints it: secrets (ours, and Kafka options such as
    ``sasl.password`` passed through) as "(set)", and the password of a URL hidden.

    >>> shown_value("SLUICE_KAFKA_SASL_PASSWORD", "hunter2")
    '(set)'
    >>> shown_value("SLUICE_REDIS_URL", "redis://app:hunter2@redis:6379/0")
    'redis://app:***@redis:6379/0'
    >>> shown_value("SLUICE_BROKERS", "k1:9092"), shown_value("SLUICE_MAX_NEW_TOKENS", "48")
    ('k1:9092', '48')
    """
    if value and is_secret(name, cls):
        return "(set)"
    return URL_PASSWORD.sub(r"\1***@", value)


def cmd_stack(args: argparse.Namespace) -> int:
    from sluice.local import stack

    return int({"up": stack.up, "down": stack.down, "topics": stack.topics}[args.action]())


def cmd_produce_profiles(args: argparse.Namespace) -> int:
    from sluice.local.profiles import load_profiles

    n = load_profiles(FraudSettings.from_env(), args.seed, args.cards)
    print(f"loaded {n} card profiles")
    return 0


def cmd_train_fraud(args: argparse.Namespace) -> int:
    if args.from_log:
        from sluice.model_lifecycle import cmd_train_from_log

        return cmd_train_from_log(args)
    from models.train_fraud import main as train

    argv = ["--events", str(args.events), "--seed", str(args.seed)] + (["--promote"] if args.promote else [])
    if args.out:
        argv += ["--out", args.out]
    return train(argv)


def cmd_convert_llm(args: argparse.Namespace) -> int:
    from models.convert_llm import main as convert

    return convert([])


def _personalize_arguments(demo: argparse._SubParsersAction, produce: argparse._SubParsersAction) -> None:
    """``sluice demo personalize`` and ``sluice produce shop`` (the personalization flow)."""
    p = demo.add_parser("personalize", help="stack, 100k-item catalogue, users, the personalization flow, a summary")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--per-user", type=int, default=20, help="interactions per user before the held-out one")
    p.add_argument("--rate", type=POSITIVE, default=1000.0, help="recommendation requests per second, open-loop")
    p.add_argument("--seconds", type=float, default=10.0, help="how long requests are sent")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(fn=_lazy("sluice.local.demo_personalize"))
    p = produce.add_parser("shop", help="the generated catalogue (live or --bulk into Redis) and interactions")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--users", type=int, default=5_000)
    p.add_argument("--per-user", type=int, default=20)
    p.add_argument("--span-h", type=float, default=48.0, help="the interactions' event times span this many hours")
    p.add_argument("--bulk", action="store_true", help="write cached vectors into Redis instead of catalogue events")
    p.add_argument(
        "--rate", type=_number(float, 0.0), default=0.0, help="then live interactions at this rate (0: none)"
    )
    p.add_argument("--count", type=COUNT, default=100_000, help="how many live interactions")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(fn=_lazy("sluice.local.shopping"), needs_broker=True)


def _observability_arguments(sub: argparse._SubParsersAction) -> None:
    """``sluice top`` (the live terminal view of running flows, :mod:`sluice.top`)."""
    p = sub.add_parser("top", help="live view of running flows: rates, P50/P99 per stage, lag, DLQ, alarms")
    p.add_argument(
        "targets",
        nargs="*",
        help="ports, host:port or URLs (default: $SLUICE_METRICS_PORT..+3, else 9100/9110/9120..+3)",
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    p.add_argument("--window", type=float, default=10.0, help="seconds of history behind P50/P99")
    p.add_argument("--once", action="store_true", help="print one frame (after two scrapes) and exit")
    p.add_argument("--svg", default=None, help="with --once: also save the frame as an SVG screenshot")
    p.add_argument("--width", type=int, default=120, help="with --once: the frame's width in columns")
    p.set_defaults(fn=_lazy("sluice.top"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluice",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a flow with python -m bytewax.run (extra arguments go to bytewax.run)")
    p.add_argument("flow", choices=FLOWS)
    p.add_argument("bytewax_args", nargs=argparse.REMAINDER, help="e.g. -- -w 2 -r .recovery -s 1 -b 0")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("settings", help="a flow's effective SLUICE_* settings, or their table")
    p.add_argument("flow", choices=FLOWS, nargs="?", default="fraud")
    p.add_argument("--markdown", action="store_true", help="the documentation table (variables, defaults, meaning)")
    p.add_argument("--write-readme", metavar="FILE", help="regenerate the settings tables of FILE (README.md)")
    p.set_defaults(fn=cmd_settings)

    p = sub.add_parser("read", help="the newest records of a topic, one JSON value per line (to its real end)")
    p.add_argument("topic")
    p.add_argument("--last", type=_number(int, 1), default=10, help="how many records, newest last (default 10)")
    p.add_argument("--keys", action="store_true", help="print each record's key before its value")
    p.set_defaults(fn=cmd_read, needs_broker=True)

    p = sub.add_parser("stack", help="the local broker (Tansu) and Redis")
    p.add_argument("action", choices=["up", "down", "topics"], help="topics: create every topic on $SLUICE_BROKERS")
    p.set_defaults(fn=cmd_stack, needs_broker=lambda a: a.action == "topics")

    demo = sub.add_parser("demo", help="a workflow end to end on a local stack").add_subparsers(
        dest="demo", required=True, metavar="{fraud,assistant,personalize,review}"
    )
    p = demo.add_parser("fraud", help="stack, model, profiles, the fraud flow, 200k events, a summary")
    _transaction_arguments(p, count=200_000, rate=10_000, malformed=0.0005, label_delay_s=0.0)
    p.add_argument("--warmup-s", type=float, default=3.0, help="events sent in the first seconds are not timed")
    p.set_defaults(fn=_lazy("sluice.local.demo_fraud"))
    p = demo.add_parser("assistant", help="stack, corpus, the assistant flow, a scripted conversation")
    p.add_argument("--generate", action="store_true", help="LLM answers (checked against the passages) even on a CPU")
    p.set_defaults(fn=_lazy("sluice.local.demo_assistant"))
    add_review_demo(demo)

    produce = sub.add_parser("produce", help="send data to Kafka or Redis").add_subparsers(
        dest="what", required=True, metavar="{transactions,profiles,corpus,shop}"
    )
    p = produce.add_parser("transactions", help="synthetic card transactions, open-loop at a fixed rate")
    _transaction_arguments(p, count=100_000, rate=5000, malformed=0.0, label_delay_s=600.0)
    p.add_argument("--shift-amounts", type=float, default=1.0, help="multiply every amount (a drift test)")
    p.add_argument("--shift-foreign", type=float, default=0.0, help="share of events moved abroad (a drift test)")
    p.add_argument(
        "--start-time",
        default="",
        help="event time of the stream's start: 'now' or epoch ms (default 2026-01-01, the same stream every run); "
        "'now' gives ids of its own; event time runs 50 ms per event, so more than 72,000 events (1 h) go "
        "'ahead' of the clock, and a second run before the first's last event time comes out late",
    )
    p.set_defaults(fn=_lazy("sluice.local.transactions"))
    p = produce.add_parser("profiles", help="the synthetic cards' profiles into Redis")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--cards", type=int, default=20_000)
    p.set_defaults(fn=cmd_produce_profiles)
    p = produce.add_parser("corpus", help="the assistant's documents (pydoc topics + stdlib docstrings)")
    p.add_argument("--topic", default=None, help="default: $SLUICE_DOCUMENTS_TOPIC")
    p.add_argument("--stats", action="store_true", help="print the corpus size instead of sending it")
    p.add_argument("--write-questions", action="store_true", help="rewrite perf/rag_questions.json")
    p.set_defaults(fn=_lazy("sluice.local.corpus"), needs_broker=lambda a: not (a.stats or a.write_questions))

    _personalize_arguments(demo, produce)

    from sluice import model_lifecycle, replay

    replay.add_arguments(sub.add_parser("replay", help="checkpoints, backups and backfills"))

    train = sub.add_parser("train", help="train a model").add_subparsers(dest="model", required=True, metavar="{fraud}")
    p = train.add_parser("fraud", help="the fraud cascade, on generated transactions or the feature log")
    p.add_argument("--events", type=int, default=400_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=None, help="registry folder (default: $SLUICE_MODEL_PATH)")
    p.add_argument(
        "--promote", action="store_true", help="serve the new version (default: only when none is served yet)"
    )
    model_lifecycle.add_train_from_log_arguments(p)
    p.set_defaults(fn=cmd_train_fraud, needs_broker=lambda a: bool(a.from_log))
    model_lifecycle.add_arguments(sub.add_parser("model", help="the fraud model registry: list, promote, shadow"))

    p = sub.add_parser("convert-llm", help="convert the SmolLM2 GGUF to safetensors once (the assistant's LLM)")
    p.set_defaults(fn=cmd_convert_llm)
    add_review_commands(sub)
    _observability_arguments(sub)
    add_deploy_commands(sub)
    add_dead_letter_commands(sub)
    return parser


def add_review_demo(demo: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = demo.add_parser("review", help="stack, fraud + review flows, the reviewer web app, traffic; prints logins")
    p.add_argument("--rate", type=POSITIVE, default=300, help="transactions per second, open-loop")
    p.add_argument("--port", type=int, default=8700, help="the web app's port")
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (0: at Ctrl-C)")
    p.add_argument("--sla-s", type=float, default=300, help="SLA of every step in the demo policy")
    p.set_defaults(fn=_lazy("sluice.local.demo_review"))


def add_review_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from sluice import review_tools

    review_tools.add_arguments(sub.add_parser("review", help="the reviewer web app, reviewers' credentials, policies"))
    audit = sub.add_parser("audit", help="the audit trail").add_subparsers(
        dest="audit_command", required=True, metavar="{verify}"
    )
    p = audit.add_parser(
        "verify", help="re-read a hash-chained topic; report the first changed/removed/reordered record"
    )
    p.add_argument("--topic", default="", help="default: $SLUICE_AUDIT_TOPIC (audit)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to read each partition to its end")
    p.set_defaults(fn=_lazy("sluice.audit"), needs_broker=True)


# --- Past one machine (#16): Kubernetes manifests and real-cluster topics (sluice/deploy.py) ---


def add_deploy_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from sluice import deploy

    deploy.add_arguments(sub.add_parser("deploy", help="Kubernetes manifests (an N-process cluster per flow), topics"))


# --- Dead letters: summary, list, redrive (sluice/dead_letters.py) ---


def add_dead_letter_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from sluice import dead_letters

    dead_letters.add_arguments(
        sub.add_parser("dlq", help="dead letters: by reason, one by one, sent back once the cause is fixed")
    )


def _one_line(exc: BaseException) -> str | None:
    """What to tell a user about an error of their setup or input (None: a bug, keep the traceback)."""
    from confluent_kafka import KafkaException
    from redis import ConnectionError as RedisConnectionError

    from models.registry import ModelUnusable, UnknownVersion
    from operators.kafka.admin import BrokerUnreachable, TopicsMissing
    from operators.kafka.sink import DeliveryFailed
    from sluice.dead_letters import RedriveFenced
    from sluice.harness.loadgen import NotDelivered
    from sluice.local.stack import StackError
    from state.checkpoints import InconsistentBackup
    from state.feature_store import RedisUnavailable

    if isinstance(exc, KafkaException):
        err = exc.args[0] if exc.args else exc
        reason = err.str() if hasattr(err, "str") else str(err)
        return f"Kafka: {reason} (SLUICE_BROKERS={os.environ.get('SLUICE_BROKERS', 'default')})"
    if isinstance(exc, RedisConnectionError):
        return f"Redis: {exc} (SLUICE_REDIS_URL={os.environ.get('SLUICE_REDIS_URL', 'default')})"
    known = (
        BrokerUnreachable,
        TopicsMissing,
        RedisUnavailable,
        UnknownVersion,
        ModelUnusable,
        NotDelivered,
        InconsistentBackup,
        FileExistsError,
        DeliveryFailed,
        RedriveFenced,
        StackError,  # a demo's stack: its port is taken (the stack is up already), a server did not start
    )
    if isinstance(exc, known):
        return str(exc)
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError):
        return f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc)
    return None


def _check_broker_first(args: argparse.Namespace) -> None:
    """For a command that talks to Kafka: a broker that does not answer is one line after
    SLUICE_CONNECT_TIMEOUT_S, not librdkafka retrying (and logging) until a longer timeout of its own."""
    from operators.kafka.admin import check_broker

    needs = getattr(args, "needs_broker", False)
    if needs is True or (callable(needs) and needs(args)):
        settings = FlowSettings.from_env()
        check_broker(settings.connection(), settings.connect_timeout_s)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_broker_first(args)
        code = int(args.fn(args))
        sys.stdout.flush()  # inside the try: a reader that left shows up here, not as a traceback at exit
        return code
    except SettingsError as exc:
        for line in str(exc).splitlines():
            print(f"sluice: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `sluice settings | head`: the reader left; say nothing more (before OSError below)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        told = _one_line(exc)
        if told is None:
            raise
        print(f"sluice: error: {told}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
