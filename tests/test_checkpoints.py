"""Backups of the recovery store: every partition at one committed epoch, into a folder of their own."""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path

import pytest

from state.checkpoints import InconsistentBackup, backup, latest_state, summarize


def _store_with_snapshots(folder: Path, partitions: list[tuple[int, list[tuple[str, str, int, object]]]]) -> Path:
    """A stand-in store in Bytewax's schema: per partition, its commit epoch and (step, key, epoch, state) rows."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, (commit, snaps) in enumerate(partitions):
        with sqlite3.connect(folder / f"part-{n}.sqlite3") as db:
            db.execute("CREATE TABLE commits (worker_index INTEGER, commit_epoch INTEGER)")
            db.execute("INSERT INTO commits VALUES (?, ?)", (n, commit))
            db.execute("CREATE TABLE exs (ex_num INTEGER, worker_count INTEGER, resume_epoch INTEGER, created_at TEXT)")
            db.execute("INSERT INTO exs VALUES (0, 2, 1, '2026-01-01T00:00:00')")
            db.execute("CREATE TABLE snaps (step_id TEXT, state_key TEXT, snap_epoch INTEGER, ser_change BLOB, "
                       "created_at TEXT)")  # fmt: skip
            for step, key, epoch, state in snaps:
                blob = None if state is None else pickle.dumps(state)
                db.execute(
                    "INSERT INTO snaps VALUES (?, ?, ?, ?, ?)", (step, key, epoch, blob, f"2026-01-01T00:0{epoch}")
                )
    return folder


def _store(folder: Path, epochs: list[int]) -> Path:
    """A stand-in recovery store: one partition file per commit epoch given, with no snapshots."""
    return _store_with_snapshots(folder, [(epoch, []) for epoch in epochs])


def test_a_backup_of_partitions_at_one_epoch_lands_whole_in_its_own_folder(tmp_path):
    store = _store(tmp_path / "rec", [7, 7])
    files = backup(store, tmp_path / "backups" / "b1")
    assert [f.name for f in files] == ["part-0.sqlite3", "part-1.sqlite3"] and all(f.exists() for f in files)
    assert not list((tmp_path / "backups").glob(".*partial"))


def test_partitions_caught_at_different_epochs_are_never_a_backup(tmp_path):
    """Copied while the flow committed between them: resuming would mix one partition's older state with the
    other's newer offsets and count events twice, silently."""
    store = _store(tmp_path / "rec", [4, 7])
    with pytest.raises(InconsistentBackup, match="different epochs in each of 3 copies"):
        backup(store, tmp_path / "b1", attempts=3, pause_s=0.0)
    assert not (tmp_path / "b1").exists() and not list(tmp_path.glob(".*partial"))


def test_a_backup_never_mixes_into_an_older_one(tmp_path):
    store = _store(tmp_path / "rec", [3, 3])
    old = _store(tmp_path / "b1", [1, 1, 1])
    with pytest.raises(FileExistsError, match="not an empty folder"):
        backup(store, old)
    assert len(list(old.glob("part-*"))) == 3


def test_the_state_read_back_is_the_newest_at_or_before_the_committed_epoch(tmp_path):
    """Epoch 4 was written on one partition but not committed on the other: resuming starts from 3."""
    store = _store_with_snapshots(
        tmp_path / "rec",
        [(3, [("fold", "u1", 2, "two"), ("fold", "u1", 3, "three"), ("fold", "u1", 4, "four")]), (4, [])],
    )
    assert latest_state(store, "fold", "u1") == "three"
    with pytest.raises(KeyError, match="no snapshot of fold/u2"):
        latest_state(store, "fold", "u2")


def test_a_summary_lists_each_checkpoints_newest_offsets_and_the_epoch_every_partition_committed(tmp_path):
    store = _store_with_snapshots(
        tmp_path / "rec",
        [
            (3, [("kafka_in_transactions", "0-tx", 1, 10), ("kafka_in_transactions", "0-tx", 2, 20)]),
            (2, [("kafka_in_transactions", "1-tx", 2, 7)]),
        ],
    )
    summary = summarize(store)
    assert summary.partitions == 2 and summary.committed_epoch == 2
    assert [(c.epoch, c.offsets) for c in summary.checkpoints] == [(1, {"0-tx": 10}), (2, {"0-tx": 20, "1-tx": 7})]
    assert summary.executions == [(0, 2, 1, "2026-01-01T00:00:00")]
