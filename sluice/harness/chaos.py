"""Chaos runs: SIGKILL a recoverable flow at random moments and check exactly-once output.

Used by ``tests/test_exactly_once.py`` (CI-sized) and ``perf/chaos.py`` (1M events).
The input is sent open-loop while the flow is killed and resumed, so kills land
mid-stream; a last life drains the input and exits. A crash-free reference run
over the same input gives the decision every event must have.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from models.synthetic_transactions import TransactionStream
from operators.kafka.admin import create_topics, read_all
from operators.kafka.records import ID_HEADER, header_value
from sluice.harness.loadgen import send_open_loop
from sluice.local.profiles import load_profiles
from sluice.local.transactions import event_records, sender
from sluice.processes import FlowProcesses, init_recovery
from sluice.settings import FraudSettings

FLOW = "dataflows.fraud:from_env()"

TIMING_FIELDS = ("decided_at", "sent_at")  # differ between runs by nature


@dataclass
class Outputs:
    """Decisions by event id (timing fields removed) and dead letters by input id."""

    decisions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dead: dict[bytes, int] = field(default_factory=dict)


@dataclass
class Verdict:
    """A chaos run's output against the reference."""

    expected: int
    missing: int
    duplicated: int
    differing: int
    dead_letters_match: bool
    kills: int
    input_accounted: bool  # the reference decided or dead-lettered every event sent, once
    examples: list[str] = field(default_factory=list)

    @property
    def exactly_once(self) -> bool:
        return (
            not (self.missing or self.duplicated or self.differing) and self.dead_letters_match and self.input_accounted
        )


class Sending(threading.Thread):
    """``count`` events sent at ``rate``/s in the background; :meth:`join` raises what stopped the sender,
    so a run whose input was cut short fails instead of being compared with a reference of the same
    short input."""

    def __init__(self, settings: FraudSettings, seed: int, count: int, rate: float, cards: int) -> None:
        super().__init__(daemon=True, name="chaos-sender")
        self.count = count
        self.error: BaseException | None = None
        self._send = (sender(settings), event_records(TransactionStream(seed, n_cards=cards), settings, 0.001), rate)

    def run(self) -> None:
        producer, records, rate = self._send
        try:
            send_open_loop(producer, records, rate, self.count)
        except BaseException as exc:  # noqa: BLE001 - handed to the joining thread
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise RuntimeError(f"the sender stopped: {self.error}") from self.error


def start_sending(settings: FraudSettings, seed: int, count: int, rate: float, cards: int = 5_000) -> Sending:
    """Load profiles, then send ``count`` events at ``rate``/s in a background thread."""
    load_profiles(settings, seed, cards)
    thread = Sending(settings, seed, count, rate, cards)
    thread.start()
    return thread


def read_outputs(settings: FraudSettings, decisions_topic: str, dlq_topic: str, timeout_s: float = 300) -> Outputs:
    """Everything committed in the output topics (read_committed)."""
    out = Outputs()
    for msg in read_all(settings.connection(), decisions_topic, timeout_s=timeout_s):
        d = orjson.loads(msg.value() or b"{}")
        for name in TIMING_FIELDS:
            d.pop(name, None)
        out.decisions.setdefault(d["event_id"], []).append(d)
    for msg in read_all(settings.connection(), dlq_topic, timeout_s=timeout_s):
        key = header_value(msg.headers(), ID_HEADER) or b""
        out.dead[key] = out.dead.get(key, 0) + 1
    return out


def _flow(settings: FraudSettings, logs: Path, extra: dict[str, str], **kwargs: Any) -> FlowProcesses:
    env = {**settings.to_env(), "SLUICE_EXACTLY_ONCE": "1", **extra}
    return FlowProcesses(FLOW, env, log_dir=logs, **kwargs).start()


def reference_run(settings: FraudSettings, work: Path, timeout_s: float = 1800) -> Outputs:
    """A crash-free run over the (complete) input into topics of its own."""
    ref = replace(
        settings,
        decisions_topic=f"{settings.decisions_topic}-ref",
        dlq_topic=f"{settings.dlq_topic}-ref",
        transactional_id_prefix=f"ref-{settings.decisions_topic}",
        stop_at_end=True,
        features_topic="",  # only decisions and dead letters are compared: the side outputs would share
        rationales_topic="",  # the chaos run's topics and only load the broker
    )
    create_topics(settings.connection(), {ref.decisions_topic: settings.topic_partitions, ref.dlq_topic: 1})
    flow = _flow(ref, work / "reference", {})
    if any(c != 0 for c in flow.wait(timeout_s)):
        raise RuntimeError("the reference run failed; see its logs")
    return read_outputs(settings, ref.decisions_topic, ref.dlq_topic)


def chaos_run(
    settings: FraudSettings,
    work: Path,
    sending: Sending,
    topologies: list[dict[str, int]],
    kills: int,
    seed: int,
    life_s: tuple[float, float] = (2.5, 5.0),
    timeout_s: float = 1800,
) -> int:
    """Kill the flow ``kills`` times (one process of it, at a random moment of each life),
    resuming from the recovery store each time, then let a last life drain the input."""
    recovery = work / "recovery"
    init_recovery(recovery, partitions=2)
    rng = random.Random(seed)
    chaos = replace(settings, transactional_id_prefix=f"chaos-{settings.decisions_topic}")
    for life in range(kills):
        flow = _flow(
            chaos, work / f"life-{life}", {}, recovery_dir=recovery, snapshot_s=1, **topologies[life % len(topologies)]
        )
        time.sleep(rng.uniform(*life_s))
        if not flow.alive():
            raise RuntimeError(f"life {life} of the flow died by itself; see {work}/life-{life}")
        flow.kill_one(rng.randrange(len(flow.procs)))
    sending.join()
    last = _flow(
        replace(chaos, stop_at_end=True),
        work / "last",
        {},
        recovery_dir=recovery,
        snapshot_s=1,
        **topologies[kills % len(topologies)],
    )
    if any(c != 0 for c in last.wait(timeout_s)):
        raise RuntimeError("the last life failed; see its logs")
    return kills


def judge(settings: FraudSettings, reference: Outputs, kills: int, sent: int) -> Verdict:
    """Compare the chaos run's committed output with the reference run's, and the reference with the
    input: each of the ``sent`` events is decided or dead-lettered there exactly once."""
    got = read_outputs(settings, settings.decisions_topic, settings.dlq_topic)
    ref = reference.decisions
    missing = [e for e in ref if e not in got.decisions]
    duplicated = [e for e, v in got.decisions.items() if len(v) > 1]
    differing = [e for e in ref if e in got.decisions and got.decisions[e][0] != ref[e][0]]
    extra = [e for e in got.decisions if e not in ref]
    return Verdict(
        expected=len(ref),
        missing=len(missing) + len(extra),
        duplicated=len(duplicated),
        differing=len(differing),
        dead_letters_match=got.dead == reference.dead and set(got.dead.values()) <= {1},
        kills=kills,
        # every input decided or dead-lettered, each once (an event dated far ahead is both: hence >=)
        input_accounted=len(ref) + len(reference.dead) >= sent
        and all(len(v) == 1 for v in ref.values())
        and set(reference.dead.values()) <= {1},
        examples=(missing + extra + duplicated + differing)[:5],
    )
