"""Read and back up Bytewax's recovery store (the SQLite partitions made by ``bytewax.recovery``).

Bytewax keeps, per partition file: executions (``exs``: worker count, resume
epoch), the last epoch every worker committed (``commits``), and snapshots
(``snaps``: pickled state per step, key and epoch). A *checkpoint* here is an
epoch with snapshots; its input offsets are the source steps' snapshots at or
before that epoch.
"""

from __future__ import annotations

import pickle
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Checkpoint:
    """One epoch of the store: when it was written and the input offsets it resumes from."""

    epoch: int
    written_at: str
    offsets: dict[str, int] = field(default_factory=dict)


@dataclass
class StoreSummary:
    """What a recovery directory holds."""

    partitions: int
    committed_epoch: int | None
    executions: list[tuple[int, int, int, str]]  # (execution, workers, resume epoch, started at)
    checkpoints: list[Checkpoint]


def _read_only(path: Path) -> sqlite3.Connection:
    """A partition opened read-only: inspecting a store must never write to it, even while the flow runs."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def store_partitions(recovery_dir: Path | str) -> list[Path]:
    """The recovery store's partition files in ``recovery_dir`` (none: no store there yet)."""
    return sorted(Path(recovery_dir).glob("part-*.sqlite3"))


def _files(recovery_dir: Path) -> list[Path]:
    files = store_partitions(recovery_dir)
    if not files:
        raise FileNotFoundError(f"{recovery_dir} holds no Bytewax recovery partitions (part-*.sqlite3)")
    return files


def _offset(snapshot: object) -> int:
    """A source partition's next offset (its snapshot is the offset, or an object with ``.offset``)."""
    offset = getattr(snapshot, "offset", snapshot)
    if not isinstance(offset, int):
        raise TypeError(f"not a source offset snapshot: {snapshot!r}")
    return offset


def summarize(recovery_dir: Path, input_step_suffix: str = "transactions") -> StoreSummary:
    """Executions, the committed epoch, and every checkpoint with its input offsets."""
    snaps: list[tuple[str, str, int, bytes | None, str]] = []
    commits: list[int] = []
    executions: set[tuple[int, int, int, str]] = set()
    files = _files(recovery_dir)
    for path in files:
        with _read_only(path) as db:
            commits += [row[0] for row in db.execute("SELECT commit_epoch FROM commits")]
            executions |= set(db.execute("SELECT ex_num, worker_count, resume_epoch, created_at FROM exs"))
            snaps += list(
                db.execute(
                    "SELECT step_id, state_key, snap_epoch, ser_change, created_at FROM snaps WHERE step_id LIKE ?",
                    (f"%{input_step_suffix}",),
                )
            )
    epochs = sorted({epoch for _, _, epoch, _, _ in snaps})
    checkpoints = []
    for epoch in epochs:
        latest: dict[str, tuple[int, bytes | None]] = {}
        written = ""
        for _, key, snap_epoch, blob, created in snaps:
            if snap_epoch <= epoch and (key not in latest or latest[key][0] < snap_epoch):
                latest[key] = (snap_epoch, blob)
            if snap_epoch == epoch:
                written = max(written, created)
        offsets = {key: _offset(pickle.loads(blob)) for key, (_, blob) in sorted(latest.items()) if blob is not None}
        checkpoints.append(Checkpoint(epoch, written, offsets))
    return StoreSummary(
        partitions=len(files),
        committed_epoch=min(commits) if commits else None,
        executions=sorted(executions),
        checkpoints=checkpoints,
    )


class InconsistentBackup(RuntimeError):
    """Every copy caught the partitions at different epochs (the flow kept committing between them)."""


def _commit_epoch(path: Path) -> int | None:
    with _read_only(path) as db:
        return db.execute("SELECT max(commit_epoch) FROM commits").fetchone()[0]


def backup(recovery_dir: Path, dest: Path, attempts: int = 50, pause_s: float = 0.05) -> list[Path]:
    """Copies of every partition at one committed epoch (SQLite's online backup), safe while the flow runs.

    Each partition is copied consistently on its own, but one after the other while the
    flow commits: with ``-b 0`` Bytewax drops a partition's older snapshots as soon as the
    next epoch commits, so a copy of partition 0 at epoch 4 beside partition 1 at epoch 7
    resumes at 8 with partition 0's older state, counting events twice. So the copies are
    made in a scratch folder and kept only when every partition is at the same commit
    epoch (copied again otherwise, ``attempts`` times), then renamed to ``dest``, which
    must not hold anything yet (stale partitions of an older backup would be mixed in).
    """
    files = _files(recovery_dir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} is not an empty folder: back up into a new one")
    scratch = dest.parent / f".{dest.name}.partial"
    for _ in range(attempts):
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        for path in files:
            with _read_only(path) as src, sqlite3.connect(scratch / path.name) as dst:
                src.backup(dst)
        if len({_commit_epoch(scratch / path.name) for path in files}) == 1:
            if dest.exists():
                dest.rmdir()
            scratch.rename(dest)
            return [dest / path.name for path in files]
        time.sleep(pause_s)
    shutil.rmtree(scratch, ignore_errors=True)
    raise InconsistentBackup(
        f"the partitions of {recovery_dir} were at different epochs in each of {attempts} copies: the flow "
        "commits faster than they can be copied; back up with the flow stopped, or run it with a larger -s"
    )


def latest_state(recovery_dir: Path, step_id: str, key: str) -> object | None:
    """The newest snapshot of ``key`` in stateful step ``step_id`` at or before the committed epoch (None if discarded)."""
    best: tuple[int, bytes | None] | None = None
    commits: list[int] = []
    rows: list[tuple[int, bytes | None]] = []
    for path in _files(recovery_dir):
        with _read_only(path) as db:
            commits += [row[0] for row in db.execute("SELECT commit_epoch FROM commits")]
            rows += list(
                db.execute(
                    "SELECT snap_epoch, ser_change FROM snaps WHERE step_id = ? AND state_key = ?", (step_id, key)
                )
            )
    committed = min(commits) if commits else None
    for epoch, blob in rows:
        if (committed is None or epoch <= committed) and (best is None or epoch > best[0]):
            best = (epoch, blob)
    if best is None:
        raise KeyError(f"no snapshot of {step_id}/{key} in {recovery_dir}")
    return pickle.loads(best[1]) if best[1] is not None else None


def forget_sink_state(recovery_dir: Path, topics: set[str]) -> int:
    """Delete the sink snapshots of ``topics``' partitions (state keys ``"topic:partition"``); how many rows went.

    A backfill resumes a copy of the live flow's store but writes to its own
    topics. The live sink's partitions are not among the backfill sink's, and
    Bytewax refuses to resume a key that is not in the step's routing map
    ("Key StateKey("decisions:3") is not in this worker's routing map"). The
    window state and input offsets stay; the backfill's sink starts afresh.
    """

    def is_partition_of_topics(key: str) -> bool:
        topic, sep, partition = key.rpartition(":")
        return bool(sep) and partition.isdigit() and topic in topics

    gone = 0
    for path in _files(recovery_dir):
        with sqlite3.connect(path) as db:
            keys = [k for (k,) in db.execute("SELECT DISTINCT state_key FROM snaps") if is_partition_of_topics(k)]
            gone += sum(db.execute("DELETE FROM snaps WHERE state_key = ?", (k,)).rowcount for k in keys)
    return gone
