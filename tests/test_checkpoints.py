"""Backups of the recovery store: every partition at one committed epoch, into a folder of their own."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from state.checkpoints import InconsistentBackup, backup


def _store(folder: Path, epochs: list[int]) -> Path:
    """A stand-in recovery store: one partition file per commit epoch given (only what backup reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, epoch in enumerate(epochs):
        with sqlite3.connect(folder / f"part-{n}.sqlite3") as db:
            db.execute("CREATE TABLE commits (worker_index INTEGER, commit_epoch INTEGER)")
            db.execute("INSERT INTO commits VALUES (?, ?)", (n, epoch))
    return folder


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
