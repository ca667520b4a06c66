"""Exactly-once across SIGKILLs: the chaos test (CI-sized; perf/chaos.py runs the large one)."""

from __future__ import annotations

import random
import threading
import time

import orjson
import pytest
from confluent_kafka import Producer

from sluice.collector import read_all
from sluice.flowproc import init_recovery
from sluice.generator import TransactionStream, event_records
from sluice.loadgen import send_open_loop
from sluice.profiles import load_profiles
from tests.helpers import start_flow

N_EVENTS = 100_000
SEND_RATE = 8_000  # events/s: the input keeps arriving for ~12 s, across every kill
EOS_ENV = {"SLUICE_EXACTLY_ONCE": "1", "SLUICE_STOP_AT_END": "1"}
TIMING_FIELDS = ("decided_at", "sent_at")


def _start_sending(settings, seed: int) -> threading.Thread:
    """Send the input open-loop in the background (slow enough that kills land mid-stream)."""
    load_profiles(settings, seed, 5_000)
    producer = Producer(settings.kafka_config(**{"enable.idempotence": True}))
    records = event_records(TransactionStream(seed, n_cards=5_000), settings, malformed_rate=0.001)
    sender = threading.Thread(target=send_open_loop, args=(producer, records, SEND_RATE, N_EVENTS))
    sender.start()
    return sender


def _outputs(settings, decisions_topic: str, dlq_topic: str) -> tuple[dict[str, list[dict]], dict[bytes, int]]:
    by_event: dict[str, list[dict]] = {}
    for msg in read_all(settings.brokers, decisions_topic, timeout_s=120):
        d = orjson.loads(msg.value())
        for f in TIMING_FIELDS:
            d.pop(f)
        by_event.setdefault(d["event_id"], []).append(d)
    dead: dict[bytes, int] = {}
    for msg in read_all(settings.brokers, dlq_topic, timeout_s=60):
        key = dict(msg.headers())["sluice.id"]
        dead[key] = dead.get(key, 0) + 1
    return by_event, dead


def _reference(settings, tmp_path) -> tuple[dict[str, list[dict]], dict[bytes, int]]:
    """A crash-free run over the same input, into topics of its own."""
    ref_decisions, ref_dlq = f"{settings.decisions_topic}-ref", f"{settings.dlq_topic}-ref"
    from sluice.stack import create_topics

    create_topics(settings.brokers, {ref_decisions: settings.topic_partitions, ref_dlq: 1})
    env = {
        **EOS_ENV,
        "SLUICE_DECISIONS_TOPIC": ref_decisions,
        "SLUICE_DLQ_TOPIC": ref_dlq,
        "SLUICE_TRANSACTIONAL_ID_PREFIX": f"ref-{settings.decisions_topic}",
    }
    flow = start_flow(settings, tmp_path / "ref-logs", extra_env=env, recovery_dir=None)
    flow.wait(timeout_s=300)
    return _outputs(settings, ref_decisions, ref_dlq)


def _chaos(settings, tmp_path, sender: threading.Thread, topologies: list[dict], kills: int, seed: int) -> int:
    """SIGKILL the flow ``kills`` times at random moments while input arrives, resuming each
    time (each life may use another topology), then let a last life drain the input."""
    recovery = tmp_path / "recovery"
    init_recovery(recovery, partitions=2)
    rng = random.Random(seed)
    env = {"SLUICE_EXACTLY_ONCE": "1", "SLUICE_TRANSACTIONAL_ID_PREFIX": f"chaos-{settings.decisions_topic}"}
    for life in range(kills):
        topo = topologies[life % len(topologies)]
        flow = start_flow(
            settings, tmp_path / f"life-{life}", extra_env=env, recovery_dir=recovery, snapshot_s=1, **topo
        )
        time.sleep(rng.uniform(2.5, 5.0))
        assert flow.alive(), "the flow died by itself"
        flow.kill_one(rng.randrange(len(flow.procs)))
    sender.join()
    last = topologies[kills % len(topologies)]
    flow = start_flow(
        settings,
        tmp_path / "last",
        extra_env={**env, "SLUICE_STOP_AT_END": "1"},
        recovery_dir=recovery,
        snapshot_s=1,
        **last,
    )
    assert max(flow.wait(timeout_s=300)) == 0
    return kills


def _assert_exactly_once(settings, reference, kills_done: int, kills_wanted: int) -> None:
    got, dead = _outputs(settings, settings.decisions_topic, settings.dlq_topic)
    ref, ref_dead = reference
    assert kills_done >= kills_wanted
    missing = set(ref) - set(got)
    duplicated = {e: len(v) for e, v in got.items() if len(v) > 1}
    assert len(ref) > 0.99 * N_EVENTS and not missing and not duplicated, (len(missing), len(duplicated))
    assert set(got) == set(ref)
    differing = [e for e in ref if got[e][0] != ref[e][0]]
    assert differing == [], f"{len(differing)} decisions differ from the crash-free run, e.g. {differing[:3]}"
    assert dead == ref_dead and set(dead.values()) == {1}


@pytest.mark.slow
def test_chaos_single_process_kill9_exactly_once(settings, tmp_path):
    sender = _start_sending(settings, seed=21)
    kills = _chaos(settings, tmp_path, sender, [{"processes": 1}], kills=3, seed=1)
    _assert_exactly_once(settings, _reference(settings, tmp_path), kills, 3)


@pytest.mark.slow
def test_chaos_two_processes_and_rescaling_exactly_once(settings, tmp_path):
    """Lives alternate 2 processes, 1 process, 1 process of 2 workers: every resume rescales."""
    sender = _start_sending(settings, seed=22)
    topologies = [{"processes": 2}, {"processes": 1}, {"processes": 1, "workers": 2}]
    kills = _chaos(settings, tmp_path, sender, topologies, kills=3, seed=2)
    _assert_exactly_once(settings, _reference(settings, tmp_path), kills, 3)
