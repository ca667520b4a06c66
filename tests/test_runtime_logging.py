"""SLUICE_LOG_LEVEL: Sluice's own lines at the chosen level, other libraries at WARNING."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from dataflows.runtime import PROJECT_LOGGERS, configure_logging
from sluice.settings import FraudSettings, SettingsError


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """What reaches the root's handlers with the root at WARNING, as flows configure it."""
    names = ("", *PROJECT_LOGGERS, "confluent_kafka")
    before = {name: logging.getLogger(name).level for name in names}
    handler = Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("confluent_kafka").setLevel(logging.NOTSET)
    yield handler.lines
    root.removeHandler(handler)
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


def test_info_lines_of_sluice_show_and_library_info_does_not(logged):
    configure_logging(FraudSettings.from_env({}).log_level)
    logging.getLogger("sluice.assistant").info("knowledge index ready")
    logging.getLogger("dataflows.personalize").debug("not at info")
    logging.getLogger("confluent_kafka").info("library chatter")
    logging.getLogger("confluent_kafka").warning("library warning")
    assert logged == ["knowledge index ready", "library warning"]


def test_warning_level_quiets_sluice_info(logged):
    configure_logging(FraudSettings.from_env({"SLUICE_LOG_LEVEL": "warning"}).log_level)
    logging.getLogger("operators.gc_pacing").info("full garbage collection")
    logging.getLogger("state.feature_store").warning("redis slow")
    assert logged == ["redis slow"]


def test_an_unknown_level_is_one_line_naming_the_setting():
    with pytest.raises(SettingsError, match="SLUICE_LOG_LEVEL"):
        FraudSettings.from_env({"SLUICE_LOG_LEVEL": "loud"})


def test_zero_shards_means_one_key_per_worker_that_bytewax_run_was_started_with(monkeypatch):
    from dataflows import command_line, runtime
    from operators.shard_keys import worker_keys

    monkeypatch.setattr(command_line, "under_bytewax_run", lambda: True)
    monkeypatch.setattr("sys.argv", ["/venv/lib/bytewax/run.py", "dataflows.fraud:from_env()", "-w", "2", "-i", "0"])
    monkeypatch.setenv("BYTEWAX_ADDRESSES", "a:1;b:1;c:1")
    assert runtime.shards_for(0) == worker_keys(6)
    assert runtime.shards_for(5) == 5  # a configured count stands
    monkeypatch.setattr(command_line, "under_bytewax_run", lambda: False)  # built in-process (tests): one worker
    assert runtime.shards_for(0) == ("0",)


def test_only_bytewax_run_without_a_recovery_store_writes_no_checkpoints(monkeypatch):
    from dataflows import command_line

    monkeypatch.setattr(command_line, "under_bytewax_run", lambda: True)
    monkeypatch.setattr("sys.argv", ["/venv/lib/bytewax/run.py", "dataflows.fraud:from_env()", "-w", "1"])
    assert not command_line.writes_checkpoints({})
    assert command_line.writes_checkpoints({"BYTEWAX_RECOVERY_DIRECTORY": "/state"})
    monkeypatch.setattr("sys.argv", ["/venv/lib/bytewax/run.py", "dataflows.fraud:from_env()", "-r/state", "-s", "1"])
    assert command_line.writes_checkpoints({})
    monkeypatch.setattr(command_line, "under_bytewax_run", lambda: False)  # in-process: its runner may recover it
    assert command_line.writes_checkpoints({})
