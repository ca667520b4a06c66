"""The ``sluice`` command: help, settings, and the replay/backfill tool against a real broker."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from models.review_policy import DEFAULT_POLICY
from operators.kafka.admin import create_topics, read_all, topic_partitions
from sluice.cli import build_parser, main
from sluice.local.stack import stack_from_env
from sluice.processes import init_recovery
from sluice.review_web.auth import Reviewers
from sluice.settings import FraudSettings
from tests.helpers import export_settings, produce_txns, start_flow, txn, wait_for, wait_for_checkpoints

ROOT = Path(__file__).resolve().parents[1]


def _sluice(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluice", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def test_help_lists_the_subcommands():
    out = _sluice("--help")
    assert out.returncode == 0
    commands = set(build_parser()._subparsers._group_actions[0].choices or ())  # type: ignore[union-attr]
    helped = set(re.findall(r"^    ([a-z-]+)", out.stdout.split("positional arguments:", 1)[1], re.M))
    section = (Path(__file__).resolve().parents[1] / "README.md").read_text().split("## The `sluice` command")[1]
    documented = set(re.findall(r"^sluice ([a-z-]+)", section.split("\n## ", 1)[0], re.M))
    assert helped == commands == documented and len(commands) >= 15  # every command in --help and the README
    assert "list" in _sluice("replay", "--help").stdout


def test_settings_shows_the_effective_values_and_rejects_bad_ones_in_one_line():
    out = _sluice("settings", "fraud", env={"SLUICE_MAX_BATCH": "64"})
    assert "SLUICE_MAX_BATCH=64" in out.stdout
    bad = _sluice("settings", "fraud", env={"SLUICE_MAX_BATCH": "abc"})
    assert bad.returncode == 2 and bad.stderr.strip() == "sluice: SLUICE_MAX_BATCH='abc' is not a whole number"


def test_summary_figures_are_plain_numbers():
    summary = json.loads((ROOT / "perf" / "reports" / "summary.json").read_text())
    assert summary and all(isinstance(section, dict) and section for section in summary.values())
    for name, section in summary.items():
        for key, value in section.items():
            assert isinstance(value, int | float) and not isinstance(value, bool), f"{name}.{key} = {value!r}"


def test_replay_lists_a_checkpoint_and_backfills_into_its_own_topic(settings, tmp_path, capsys, monkeypatch):
    settings = replace(settings, exactly_once=True)  # the README's sequence: an exactly-once flow's checkpoint
    recovery = tmp_path / "recovery"
    init_recovery(recovery)
    cases = [txn(f"r-{i}", f"card-{i % 5}", 10.0 + i, t_s=i) for i in range(20)]
    produce_txns(settings, cases[:10])
    cut_ms = int(time.time() * 1000) + 1  # the backfill below starts here: the second ten only
    time.sleep(0.01)
    produce_txns(settings, cases[10:])
    flow = start_flow(settings, tmp_path, recovery_dir=recovery, snapshot_s=1)
    try:
        assert len(wait_for(settings, settings.decisions_topic, 20)) == 20
        wait_for_checkpoints(recovery)  # one more checkpoint: it holds every input offset of the 20 decided events
    finally:
        flow.stop()
    export_settings(monkeypatch, settings)
    assert main(["replay", "list", str(recovery)]) == 0
    listing = capsys.readouterr().out
    assert "committed epoch" in listing and f"0-{settings.transactions_topic}=" in listing

    assert main(["replay", "run", "--output-topic", settings.decisions_topic]) == 2  # never the live topic
    assert main(["replay", "backup", str(recovery), str(tmp_path / "backup")]) == 0
    side = [settings.features_topic, settings.shadow_topic, settings.rationales_topic]
    live_side = {topic: len(read_all(settings.connection(), topic)) for topic in side}
    backfill = f"{settings.decisions_topic}-backfill"
    assert main(["replay", "run", "--output-topic", backfill, "--from-time", str(cut_ms), "--timeout", "300"]) == 0
    replayed = [orjson.loads(m.value() or b"{}") for m in read_all(settings.connection(), backfill)]
    assert sorted(d["event_id"] for d in replayed) == sorted(c.event_id for c in cases[10:])
    assert {d["features"]["count_1h"] for d in replayed} == {1, 2}  # empty state: each card's two events since
    assert len(read_all(settings.connection(), settings.decisions_topic)) == 20  # the live output is untouched
    capsys.readouterr()
    assert main(["replay", "run", "--output-topic", backfill, "--from-offset", "0"]) == 2  # would append again
    refused = capsys.readouterr().err
    assert f"{backfill} holds 10 records," in refused and refused.endswith("replay into a new --output-topic\n")
    assert main(["replay", "run", "--output-topic", settings.labels_topic]) == 2  # any flow's topic, not only outputs
    assert f"{settings.labels_topic} belongs to a flow" in capsys.readouterr().err

    # from the backup: the flow's state and input offsets resume, its sink starts afresh on the backfill's topic
    later = [txn(f"r-later-{i}", f"card-{i % 5}", 50.0 + i, t_s=100 + i) for i in range(10)]
    produce_txns(settings, later)
    resumed = f"{settings.decisions_topic}-resumed"
    args = ["replay", "run", "--output-topic", resumed, "--from-backup", str(tmp_path / "backup"), "--timeout", "300"]
    assert main(args) == 0, capsys.readouterr().err
    from_backup = [orjson.loads(m.value() or b"{}") for m in read_all(settings.connection(), resumed)]
    assert sorted(d["event_id"] for d in from_backup) == sorted(c.event_id for c in later)  # no more, no fewer
    card_0 = next(d for d in from_backup if d["event_id"] == "r-later-0")
    assert card_0["features"]["count_1h"] == 5  # card-0's window resumed: t=0, 5, 10, 15 s before, then this one
    assert len(read_all(settings.connection(), f"{resumed}-features")) == len(later)  # its own feature log
    assert {topic: len(read_all(settings.connection(), topic)) for topic in side} == live_side  # live ones untouched
    assert main(["replay", "backup", str(recovery), str(tmp_path / "backup-2")]) == 0
    assert init_recovery_refuses(tmp_path / "backup-2")


def init_recovery_refuses(recovery: Path) -> bool:
    """``init_recovery`` on a folder that holds a checkpoint says so in one line instead of replacing it."""
    try:
        init_recovery(recovery)
    except ValueError as exc:
        return "already holds a checkpoint" in str(exc) and "\n" not in str(exc)
    return False


@pytest.mark.parametrize(
    "command",
    [
        ["produce", "transactions", "--count", "10"],
        ["read", "fraud-decisions"],
        ["replay", "run", "--output-topic", "x-backfill", "--from-offset", "0"],
        ["audit", "verify"],
        ["stack", "topics"],
    ],  # one of each way a command asks for the check: always, per action, inside its own checks
    ids=lambda c: " ".join(c[:2]),
)
def test_an_unreachable_broker_is_one_line_and_a_failure_not_a_send_report(command):
    out = _sluice(*command, env={"SLUICE_BROKERS": "127.0.0.1:1", "SLUICE_CONNECT_TIMEOUT_S": "2"})
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().startswith("sluice: error: no Kafka broker answered at 127.0.0.1:1"), out.stderr
    assert "check SLUICE_BROKERS" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_a_mistyped_topic_is_one_line_and_never_created(settings):
    env = {**settings.to_env(), "SLUICE_TRANSACTIONS_TOPIC": "no-such-transactions-x"}
    out = _sluice("produce", "transactions", "--count", "5", env=env)
    assert out.returncode == 1 and "no-such-transactions-x do not exist" in out.stderr, out.stderr
    assert topic_partitions(settings.connection(), ["no-such-transactions-x"]) == {}


def test_bad_load_generator_arguments_are_refused_in_one_line():
    for args, wanted in [
        (["--rate", "0"], "argument --rate: 0 is not more than 0"),
        (["--count", "-5"], "argument --count: -5 is not at least 0"),
        (["--malformed-rate", "2"], "argument --malformed-rate: 2 is not from 0 to 1"),
        (["--rate", "nan"], "argument --rate: nan is not more than 0"),
    ]:
        out = _sluice("produce", "transactions", *args)
        assert out.returncode == 2 and out.stderr.strip().endswith(wanted), out.stderr


def test_sluice_run_prepares_a_recovery_folder_that_holds_no_store_yet(tmp_path, capsys):
    """bytewax.run stops with a traceback on a missing or empty recovery folder; `sluice run` creates the store
    (1 partition), leaves an existing one alone, and refuses a file in one line."""
    from sluice.cli import _prepare_recovery

    fresh = tmp_path / "new" / ".recovery"
    _prepare_recovery(str(fresh))
    assert [p.name for p in fresh.glob("part-*.sqlite3")] == ["part-0.sqlite3"]
    assert "a new recovery store, 1 partition" in capsys.readouterr().err
    before = (fresh / "part-0.sqlite3").stat().st_mtime_ns
    _prepare_recovery(str(fresh))  # a store already: resumed from, never replaced
    assert (fresh / "part-0.sqlite3").stat().st_mtime_ns == before and capsys.readouterr().err == ""
    a_file = tmp_path / "oops"
    a_file.write_text("")
    with pytest.raises(SystemExit, match="the recovery directory .* is a file"):
        _prepare_recovery(str(a_file))


def test_bytewax_run_on_a_folder_without_a_store_is_one_line_naming_the_fix(tmp_path):
    """Started with python -m bytewax.run directly, a flow checks its -r folder before Bytewax panics on it."""
    from dataflows.runtime import RecoveryStoreMissing, check_recovery_dir

    with pytest.raises(RecoveryStoreMissing, match=f"{tmp_path} holds no recovery store.*bytewax.recovery"):
        check_recovery_dir(["dataflows.fraud:from_env()", "-r", str(tmp_path), "-s", "1"], {})
    init_recovery(tmp_path, 1)
    check_recovery_dir(["dataflows.fraud:from_env()", "-r", str(tmp_path), "-s", "1"], {})  # a store: fine
    check_recovery_dir(["dataflows.fraud:from_env()"], {})  # no recovery at all: fine


def test_a_bounded_run_that_overruns_is_stopped_not_left_writing():
    from sluice.processes import FlowProcesses, FlowTimedOut

    flow = FlowProcesses("", {}, program=["sleep", "30"]).start()
    child = flow.procs[0]
    with pytest.raises(FlowTimedOut, match="did not finish within 0.5s; it was stopped"):
        flow.wait(0.5)
    assert child.poll() is not None and not flow.alive()


def test_a_replay_from_a_negative_offset_or_time_is_refused_before_anything_is_created(capsys):
    for option in ("--from-offset", "--from-time"):
        with pytest.raises(SystemExit):
            main(["replay", "run", "--output-topic", "x", option, "-5"])
        assert f"argument {option}: -5 is not a whole number from 0" in capsys.readouterr().err


def test_a_replay_runs_only_the_flow_whose_outputs_it_redirects(capsys):
    assert main(["replay", "run", "--output-topic", "x", "--flow", "dataflows.personalize:from_env()"]) == 2
    assert "--flow must be a factory of dataflows.fraud" in capsys.readouterr().err


def test_sluice_read_prints_a_topics_newest_records_read_to_the_end(settings, capsys, monkeypatch):
    first = Producer(settings.connection().producer_config())
    at = int(time.time() * 1000) - 60_000
    for i in range(12):  # one second apart, spread over the partitions by key: newest by time is k9, k10, k11
        first.produce(
            settings.decisions_topic, key=f"k{i}".encode(), value=f'{{"n": {i}}}'.encode(), timestamp=at + i * 1000
        )
    assert first.flush(30) == 0
    export_settings(monkeypatch, settings)
    assert main(["read", settings.decisions_topic, "--last", "3", "--keys"]) == 0
    assert capsys.readouterr().out.splitlines() == [f'k{i}\t{{"n": {i}}}' for i in (9, 10, 11)]  # oldest first
    assert main(["read", settings.decisions_topic, "--last", "100"]) == 0
    assert sorted(capsys.readouterr().out.splitlines()) == sorted(f'{{"n": {i}}}' for i in range(12))

    # a transactional topic: every commit marker takes an offset, so the last offset is not a record
    txn_topic = f"{settings.decisions_topic}-txn"
    create_topics(settings.connection(), {txn_topic: 1})
    producer = Producer({"bootstrap.servers": settings.brokers, "transactional.id": f"read-{txn_topic}"})
    producer.init_transactions(10)
    for i in range(5):
        producer.begin_transaction()
        producer.produce(txn_topic, value=b"%d" % i, partition=0)
        producer.commit_transaction(10)
    del producer  # closed now, not connected when the session's broker stops
    for last, want in ((1, ["4"]), (3, ["2", "3", "4"])):
        assert main(["read", txn_topic, "--last", str(last)]) == 0
        assert capsys.readouterr().out.splitlines() == want


def test_the_local_stack_starts_where_the_settings_point_and_its_export_line_keeps_the_redis_database(monkeypatch):
    monkeypatch.setenv("SLUICE_BROKERS", "127.0.0.1:29093")
    monkeypatch.setenv("SLUICE_REDIS_URL", "redis://localhost:26380/5")
    monkeypatch.delenv("SLUICE_STACK_KAFKA_PORT", raising=False)
    monkeypatch.delenv("SLUICE_STACK_REDIS_PORT", raising=False)
    stack = stack_from_env()
    assert (stack.brokers, stack.redis_url) == ("127.0.0.1:29093", "redis://127.0.0.1:26380/5")


def test_add_reviewer_refuses_a_role_no_chain_can_ask_for_and_checks_against_a_given_policy(
    tmp_path, capsys, monkeypatch
):
    creds = tmp_path / "reviewers.json"
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse battery\n"))
    assert (
        main(["review", "add-reviewer", "--file", str(creds), "--id", "ann", "--role", "analist", "--password-stdin"])
        == 2
    )
    err = capsys.readouterr().err
    assert "'analist' is not one of the built-in policy's roles (analyst, senior, head)" in err and not creds.exists()

    policy = dict(DEFAULT_POLICY, roles=["analyst", "senior", "head", "auditor"])
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse battery\n"))
    args = ["review", "add-reviewer", "--file", str(creds), "--id", "ann", "--role", "auditor", "--password-stdin"]
    assert main([*args, "--policy", str(tmp_path / "policy.json")]) == 0
    saved = Reviewers.load(creds).authenticate("ann", "correct horse battery")
    assert saved is not None and saved.role == "auditor"
    assert main([*args, "--policy", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_review_policy_checks_a_file_in_one_line_and_publishes_it_as_given(stack, tmp_path, capsys, monkeypatch):
    topic = f"policies-{tmp_path.name}"
    monkeypatch.setenv("SLUICE_BROKERS", stack.brokers)
    monkeypatch.setenv("SLUICE_POLICIES_TOPIC", topic)
    bad, good = tmp_path / "bad.json", tmp_path / "good.json"
    bad.write_text(json.dumps(dict(DEFAULT_POLICY, roles=[])))
    good.write_text(json.dumps(dict(DEFAULT_POLICY, version="cli-2")))
    for path in (bad, tmp_path / "missing.json"):
        assert main(["review", "policy", "check", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sluice: error:") and path.name in err[0], err
    assert main(["review", "policy", "check", str(good)]) == 0
    assert capsys.readouterr().out.startswith("policy cli-2: roles analyst < senior < head; chains ")
    assert main(["review", "policy", "publish", str(good)]) == 1  # its topic does not exist yet: one line
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    conn = FraudSettings(brokers=stack.brokers).connection()
    create_topics(conn, {topic: 1})
    assert main(["review", "policy", "publish", str(good)]) == 0
    [record] = read_all(conn, topic)
    assert record.key() == b"policy" and orjson.loads(record.value() or b"{}") == json.loads(good.read_text())


@pytest.mark.parametrize("demo", ["fraud"])  # every demo starts its stack through the same LocalStack.start
def test_a_demo_whose_stack_ports_are_taken_says_so_in_one_line(settings, demo):
    """The session's stack holds the ports: the demo cannot start its own and says why, without a traceback."""
    out = _sluice("demo", demo, env={"SLUICE_BROKERS": settings.brokers, "SLUICE_REDIS_URL": settings.redis_url})
    assert out.returncode == 1, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sluice: error: Kafka broker port") and "already taken" in lines[0]
