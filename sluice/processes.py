"""Run a dataflow as ``python -m bytewax.run`` processes: start, stop, kill (replays, demos, tests, chaos)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from state.checkpoints import store_partitions


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FlowProcesses:
    """One Bytewax dataflow run as ``processes`` OS processes of ``workers`` threads each."""

    import_str: str
    env: dict[str, str]
    processes: int = 1
    workers: int = 1
    recovery_dir: Path | None = None
    snapshot_s: int = 1
    log_dir: Path | None = None
    program: list[str] | None = None  # run this instead of bytewax.run (baselines)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def argv(self, index: int, addresses: list[str]) -> list[str]:
        if self.program is not None:
            return list(self.program)
        argv = [sys.executable, "-m", "bytewax.run", self.import_str, "-w", str(self.workers)]
        if self.processes > 1:
            argv += ["-i", str(index), "-a", ";".join(addresses)]
        if self.recovery_dir is not None:
            argv += ["-r", str(self.recovery_dir), "-s", str(self.snapshot_s), "-b", "0"]
        return argv

    def start(self) -> FlowProcesses:
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(self.processes)]
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        for i in range(self.processes):
            out: int | IO[bytes] = subprocess.DEVNULL
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                out = open(self.log_dir / f"flow-{i}.log", "ab")  # noqa: SIM115 - child owns it
            self.procs.append(subprocess.Popen(self.argv(i, addresses), env=env, stdout=out, stderr=subprocess.STDOUT))
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def alive(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def kill(self) -> None:
        """SIGKILL every process: a crash, as far as the flow can tell."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            p.wait()
        self.procs.clear()

    def kill_one(self, index: int, grace_s: float = 10.0) -> None:
        """SIGKILL one process; the cluster's other processes are given ``grace_s`` to notice
        and exit, then killed too (as a supervisor restarting the cluster would)."""
        self.procs[index].send_signal(signal.SIGKILL)
        self._reap(grace_s)

    def stop(self, grace_s: float = 10.0) -> None:
        """Interrupt the processes, then kill what is left after ``grace_s``."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        self._reap(grace_s)

    def _reap(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for every process to exit; SIGKILL the rest."""
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()

    def wait(self, timeout_s: float) -> list[int]:
        """Wait up to ``timeout_s`` in all for every process to exit by itself; returns their exit codes.
        Past the deadline the processes are stopped (never left writing after their caller gave up) and
        :class:`FlowTimedOut` is raised."""
        deadline = time.monotonic() + timeout_s
        try:
            codes = [p.wait(max(0.0, deadline - time.monotonic())) for p in self.procs]
        except subprocess.TimeoutExpired:
            self.stop()
            raise FlowTimedOut(f"the flow did not finish within {timeout_s:g}s; it was stopped") from None
        self.procs.clear()
        return codes


class FlowTimedOut(RuntimeError):
    """A bounded run did not finish in time (its processes were stopped)."""


def init_recovery(recovery_dir: Path, partitions: int = 1) -> None:
    """Create Bytewax's recovery partitions (``python -m bytewax.recovery DIR N``).

    A folder that already holds partitions is refused with one line: Bytewax
    would panic on it, and silently replacing a checkpoint would lose the
    state a resume needs. Resume from it, or remove it for a fresh start.
    """
    held = store_partitions(recovery_dir)
    if held:
        raise ValueError(
            f"{recovery_dir} already holds a checkpoint ({len(held)} partitions): resume from it, "
            "or remove the folder to start afresh"
        )
    recovery_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(recovery_dir), str(partitions)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
