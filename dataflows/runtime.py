"""What every flow process does before its dataflow runs: check its world, then tune the process.

A flow that starts against a wrong broker address, a missing topic, a Redis that
refuses it or a GPU that is not there should say so at once in one line and
exit non-zero, not hang, print hundreds of lines, or fail at the first event.
:func:`flow_from_env` is what the ``from_env()`` factories call:
``python -m bytewax.run "dataflows.fraud:from_env()"``.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import TypeVar

from bytewax.dataflow import Dataflow

from dataflows import observability
from dataflows.command_line import BytewaxCommandLine, under_bytewax_run
from models.devices import DeviceUnavailable, pick_device
from models.registry import ModelUnusable
from operators.batching import Shards
from operators.gc_pacing import PACER
from operators.kafka.admin import BrokerUnreachable, TopicsMissing, check_broker, require_topics
from operators.kafka.source import KafkaPartitionSource
from operators.lifecycle import exit_process, request_stop, set_failure_handler, stop_requested
from operators.shard_keys import worker_keys
from sluice.settings import FlowSettings, SettingsError
from state.checkpoints import store_partitions
from state.feature_store import RedisUnavailable, check_redis

S = TypeVar("S", bound=FlowSettings)

# Sluice's own loggers take SLUICE_LOG_LEVEL; every other library stays at WARNING.
PROJECT_LOGGERS = ("sluice", "dataflows", "operators", "state", "models")

STARTUP_ERRORS = (
    SettingsError,
    BrokerUnreachable,
    TopicsMissing,
    RedisUnavailable,
    DeviceUnavailable,
    FileNotFoundError,
    ModelUnusable,
)  # RecoveryStoreMissing is a FileNotFoundError


def shards_for(configured: int) -> Shards:
    """A batching step's shards: ``configured`` keys, or for 0 one key per worker that ``bytewax.run`` was
    started with, each placed on its own worker (:func:`operators.shard_keys.worker_keys`; a flow built
    in-process, as tests build it, has one worker).

    Batching steps spread their items over shard keys so that every worker batches its share. More keys
    than workers only cut every batch into smaller ones: with the old default of 8 keys on one worker, the
    fraud flow's sequence model ran ~5 events per call at ~0.3 ms of fixed cost each (perf/REPORT.md,
    round five). And Bytewax places a key by its hash, not its number: 8 plain keys on 2 workers split 6/2.
    """
    if configured > 0:
        return configured
    return worker_keys(BytewaxCommandLine.of_this_process(os.environ).worker_count)


class RecoveryStoreMissing(FileNotFoundError):
    """``-r`` names a folder without a recovery store (bytewax.run would stop with a traceback)."""


def check_recovery_dir(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Raise :class:`RecoveryStoreMissing` (one line) when the command line's recovery folder holds no store."""
    folder = BytewaxCommandLine.parse(argv, env).recovery_dir
    if folder is not None and not store_partitions(folder):
        raise RecoveryStoreMissing(
            f"the recovery directory {folder} holds no recovery store: create it once with "
            f"`python -m bytewax.recovery {folder} N` (or start with `sluice run`, which does)"
        )


def without_recovery_warning(exactly_once: bool, argv: Sequence[str], env: Mapping[str, str]) -> str | None:
    """The warning for an exactly-once flow run without a recovery store (None when there is nothing to say):
    it runs, and a restart writes nothing twice (the sink skips what the output topic already answers), but
    every start reads the input from ``SLUICE_START_FROM`` again (``latest`` skips what arrived while it was
    down), rebuilds its state from nothing and reads its whole output topic.

    >>> without_recovery_warning(True, ["-r", ".rec"], {}) is None, without_recovery_warning(False, [], {}) is None
    (True, True)
    >>> without_recovery_warning(True, ["-w", "2"], {})[:52]
    'SLUICE_EXACTLY_ONCE is on but the flow has no recove'
    """
    if not exactly_once or BytewaxCommandLine.parse(argv, env).recovery_dir is not None:
        return None
    return (
        "SLUICE_EXACTLY_ONCE is on but the flow has no recovery store (-r DIR): each start reads the input "
        "again from SLUICE_START_FROM, with empty state (windows, cases, timers), and rereads its whole output"
    )


def configure_logging(level: str) -> None:
    """Sluice's own loggers log from ``level`` (``SLUICE_LOG_LEVEL``); libraries keep WARNING.

    Lines a user wants by default (the knowledge index is ready, a replica loaded its items, a
    transactional sink skips what a crashed run already committed) are INFO: at the root's WARNING
    they were either lost or had to be logged as warnings they are not.
    """
    for package in PROJECT_LOGGERS:
        logging.getLogger(package).setLevel(level.upper())


def tune_gc(settings: FlowSettings) -> None:
    """Move start-up objects (models, tokenizers, libraries) out of the collector's way and collect on a
    clock (:mod:`operators.gc_pacing`), or, with ``SLUICE_GC_INTERVAL_S=0``, on allocation counts with a
    gen-0 threshold of 50,000.

    The flows allocate a few short-lived objects per event; with CPython's default gen-0
    threshold (700) the collector ran every few events' worth of a batch and walked every
    long-lived object at each full collection (fraud flow: 61 -> 34.5 us/event with the
    50,000 threshold); with that threshold it still took 10% of the fraud drain's CPU walking
    the items in flight, which pacing takes out (see the module).
    """
    if settings.gc_interval_s > 0:
        PACER.interval_s, PACER.full_interval_s = settings.gc_interval_s, settings.gc_full_interval_s
        PACER.start()
        return
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def limit_threads(threads: int) -> None:
    """Intra-op threads of torch and faiss (0: leave their defaults, one per core).

    A flow process is one of several busy processes on its machine (the broker, Redis, other flow
    processes), and its model and search calls are small: OpenMP threads that wait for each other by
    spinning take cores from the rest. Measured on the 2-core box with the personalization flow under
    load: 70% of its samples in faiss's IVF search with the default threads (perf/REPORT.md).
    """
    if threads <= 0:
        return
    import faiss  # imported here: the fraud flow does not need it
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def preflight(settings: FlowSettings, *, redis: bool) -> None:
    """Check the broker, the topics, Redis (when the flow uses it) and the device; raise one clear error."""
    conn = settings.connection()
    check_broker(conn, settings.connect_timeout_s)
    require_topics(conn, [*settings.input_topics(), *settings.output_topics()])
    if redis:
        check_redis(settings.redis_url, settings.connect_timeout_s)
    pick_device(settings.device)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """First Ctrl-C / SIGTERM: a clean stop (sources end, the flow drains and commits, exit 0).
    A second one: stop now (a crash, as far as recovery is concerned)."""
    if stop_requested():
        os._exit(130)
    sys.stderr.write(f"sluice: {signal.Signals(signum).name}: stopping cleanly (again to stop at once)\n")
    request_stop()


def install_process_handlers() -> None:
    """Clean stop on SIGINT/SIGTERM; failures print one line and exit 3 (see :mod:`operators.lifecycle`)."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    set_failure_handler(exit_process)


def kafka_source(settings: FlowSettings, topic: str, start: str) -> KafkaPartitionSource:
    """A flow's checkpointed source for ``topic`` from ``start``, on the flow's connection, batch size,
    outage timeout, and tailing unless ``SLUICE_STOP_AT_END``."""
    return KafkaPartitionSource(
        settings.connection(),
        [topic],
        start=start,
        tail=not settings.stop_at_end,
        batch_size=settings.source_batch_size,
        give_up_after_s=settings.outage_timeout_s,
    )


def flow_from_env(settings_cls: type[S], build: Callable[[S], Dataflow], *, redis: bool) -> Dataflow:
    """Read the settings, check the world, build the flow; on a start-up error print one line and exit 2.

    Also installs the process handlers (a clean stop on Ctrl-C / SIGTERM, one-line failures) and starts
    the flow's observability (:mod:`dataflows.observability`: metrics server, tracing).
    """
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_cls.from_env()
        configure_logging(settings.log_level)
        if under_bytewax_run():  # its -r is ours to check (not a test runner's options)
            check_recovery_dir(sys.argv[1:], os.environ)
            warning = without_recovery_warning(getattr(settings, "exactly_once", False), sys.argv[1:], os.environ)
            if warning:
                logging.getLogger("dataflows").warning(warning)
        preflight(settings, redis=redis)
        flow = build(settings)
        observability.start(settings, flow.flow_id)
    except STARTUP_ERRORS as exc:
        for line in str(exc).splitlines():
            print(f"sluice: error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    install_process_handlers()
    tune_gc(settings)
    return flow
