"""What a ``python -m bytewax.run`` command line says about the cluster a flow process is part of.

The flows read it for three things: the recovery folder (``-r``, checked before a
flow starts), the number of workers in all (``-w`` times the processes of ``-a``:
the batching steps' shard keys) and this process's index (``-i``: its metrics port
and labels). They are read here, once, with ``bytewax.run``'s own parser plus the
scaling options it adds, so that abbreviations (``--recovery``), values glued to
short options (``-i1``, ``-r/tmp/rec``), ``--name=value`` and repeated options mean
what they mean to Bytewax. Where the command line is silent, Bytewax's environment
variables count (``BYTEWAX_RECOVERY_DIRECTORY``, ``BYTEWAX_WORKERS_PER_PROCESS``,
``BYTEWAX_PROCESS_ID``, ``BYTEWAX_ADDRESSES``), then what its Helm chart sets on
Kubernetes: the process id from the pod's ordinal and the addresses from the
hostfile.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BytewaxCommandLine:
    """The parts of a ``bytewax.run`` command line (and environment) the flows act on.

    >>> line = BytewaxCommandLine.parse(["f:flow", "-w", "3", "-i1", "--addr", "a:1;b:1", "-r", ".rec"], {})
    >>> line.recovery_dir, line.process_index, line.processes, line.worker_count
    ('.rec', 1, 2, 6)
    """

    recovery_dir: str | None = None
    workers_per_process: int = 1
    process_id: int | None = None  # None: no -i, so -a does not count (bytewax.run runs one process)
    addresses: str | None = None

    @property
    def process_index(self) -> int:
        """This process's index in its cluster, 0 for a single process."""
        return self.process_id or 0

    @property
    def processes(self) -> int:
        """How many processes the cluster has: the addresses, once a process id is given; else one."""
        if self.process_id is None or not self.addresses:
            return 1
        return max(1, len([a for a in self.addresses.split(";") if a.strip()]))

    @property
    def worker_count(self) -> int:
        """Workers in all: workers per process times processes."""
        return max(1, self.workers_per_process) * self.processes

    @classmethod
    def parse(cls, bytewax_args: Sequence[str], env: Mapping[str, str]) -> BytewaxCommandLine:
        """Read ``bytewax_args`` (``bytewax.run``'s arguments; the import string may be left out) and ``env``.

        >>> BytewaxCommandLine.parse(["-r/tmp/rec", "-s", "1"], {}).recovery_dir  # sluice run's extra arguments
        '/tmp/rec'
        >>> BytewaxCommandLine.parse(["f:flow", "--recovery-directory=x"], {"BYTEWAX_RECOVERY_DIRECTORY": "y"})
        BytewaxCommandLine(recovery_dir='x', workers_per_process=1, process_id=None, addresses=None)
        >>> line = BytewaxCommandLine.parse(["f:flow"], {"BYTEWAX_WORKERS_PER_PROCESS": "3", "BYTEWAX_PROCESS_ID": "2",
        ...     "BYTEWAX_ADDRESSES": "a:1;b:1;c:1", "BYTEWAX_RECOVERY_DIRECTORY": "y"})
        >>> line.recovery_dir, line.process_index, line.worker_count
        ('y', 2, 9)
        >>> BytewaxCommandLine.parse(["f:flow", "-a", "a:1;b:1"], {}).worker_count  # no process id: one process
        1
        >>> BytewaxCommandLine.parse([], {"BYTEWAX_POD_NAME": "fraud-3", "BYTEWAX_STATEFULSET_NAME": "fraud"})
        BytewaxCommandLine(recovery_dir=None, workers_per_process=1, process_id=3, addresses=None)
        >>> BytewaxCommandLine.parse(["f:flow", "-w", "two"], {"BYTEWAX_RECOVERY_DIRECTORY": "y"})  # bytewax.run
        ... # refuses it before any flow is built, and says why; from here, only the environment counts
        BytewaxCommandLine(recovery_dir='y', workers_per_process=1, process_id=None, addresses=None)
        >>> BytewaxCommandLine.parse(["--help"], {}).recovery_dir is None  # printed by bytewax.run, not here too
        True
        """
        try:  # argparse prints what it refuses (and --help): bytewax.run says it again, once is enough
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                args, _ = _parser(env).parse_known_args(list(bytewax_args))
        except SystemExit:
            return cls.parse([], env) if bytewax_args else cls()
        process_id = args.process_id
        if process_id is None:
            pod, statefulset = env.get("BYTEWAX_POD_NAME", ""), env.get("BYTEWAX_STATEFULSET_NAME", "")
            ordinal = pod.removeprefix(statefulset + "-")
            process_id = int(ordinal) if pod and statefulset and ordinal.isdecimal() else None
        addresses = args.addresses
        if process_id is not None and addresses is None and "BYTEWAX_HOSTFILE_PATH" in env:
            try:
                with open(env["BYTEWAX_HOSTFILE_PATH"]) as hostfile:
                    addresses = ";".join(line.strip() for line in hostfile if line.strip())
            except OSError:  # bytewax.run reads it too and says what is wrong
                addresses = None
        recovery = args.recovery_directory
        return cls(
            recovery_dir=None if recovery is None else str(recovery),
            workers_per_process=args.workers_per_process or 1,
            process_id=process_id,
            addresses=addresses,
        )

    @classmethod
    def of_this_process(cls, env: Mapping[str, str]) -> BytewaxCommandLine:
        """This process's: its ``sys.argv`` and ``env`` when it is ``python -m bytewax.run``; else one process of
        one worker (a flow built in-process, as tests build it, runs on one worker whatever the environment
        says, and a test runner's options are not a Bytewax command line)."""
        return cls.parse(sys.argv[1:], env) if under_bytewax_run() else cls()


def writes_checkpoints(env: Mapping[str, str]) -> bool:
    """Whether this process's snapshots can reach a recovery store: False only for ``python -m bytewax.run``
    without one (no ``-r``, no ``BYTEWAX_RECOVERY_DIRECTORY`` in ``env``).

    Bytewax asks every stateful step for a snapshot at each epoch's end whether or not it has a store, and
    without one drops them unread (measured on 0.21: 110 ``snapshot`` calls for 100 items on 10 keys, not one
    of them pickled). A step whose snapshot does work of its own (the fraud window pickles each changed card)
    can skip it then. A flow built in-process may be given a recovery config by its runner, so it is taken to
    write them.
    """
    return not under_bytewax_run() or BytewaxCommandLine.of_this_process(env).recovery_dir is not None


def under_bytewax_run() -> bool:
    """Whether this process is ``python -m bytewax.run`` (whose arguments are then in ``sys.argv``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name == "bytewax.run"


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """``bytewax.run``'s parser (0.21) with the scaling options it adds, its defaults taken from ``env``."""
    from bytewax.run import _create_arg_parser  # imported here: bytewax.run is a script's module

    parser = _create_arg_parser()
    for action in parser._actions:
        if action.dest == "import_str":
            action.nargs = "?"  # sluice run passes bytewax.run's options without the import string
    parser.add_argument("-w", "--workers-per-process", type=int)
    parser.add_argument("-i", "--process-id", type=int)
    parser.add_argument("-a", "--addresses")
    # bytewax.run takes these defaults from os.environ; ``env`` is the environment asked about
    parser.set_defaults(
        recovery_directory=env.get("BYTEWAX_RECOVERY_DIRECTORY"),
        snapshot_interval=None,
        backup_interval=None,
        workers_per_process=_int_or_none(env.get("BYTEWAX_WORKERS_PER_PROCESS")),
        process_id=_int_or_none(env.get("BYTEWAX_PROCESS_ID")),
        addresses=env.get("BYTEWAX_ADDRESSES"),
    )
    return parser


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdecimal() else None
