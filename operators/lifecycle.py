"""How a running flow stops: gracefully on request, or at once when its input can no longer be trusted.

* :func:`request_stop` (the flow runtime calls it on SIGINT/SIGTERM): every Kafka
  source partition ends at its next poll, so the dataflow drains what it holds,
  writes its last checkpoint and exits 0. A restart resumes exactly after it:
  nothing is replayed twice, unlike Bytewax's default Ctrl-C (a panic, exit 1,
  and the last epochs replayed).
* :func:`fail`: a source or sink found a condition it cannot recover from (the
  topic was deleted, offsets went backwards, the broker has been gone too long).
  By default it raises :class:`FlowFailure` (what a library caller or a test
  wants); the flow runtime installs a handler that prints the reason as ONE line
  and ends the process with exit code 3, because an exception inside Bytewax
  becomes a Rust panic with a screenful of backtrace that buries the cause.
  Ending the process is a crash as far as recovery is concerned: the next start
  resumes from the last checkpoint, so nothing is lost.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

_stop = threading.Event()


class FlowFailure(RuntimeError):
    """The flow cannot go on correctly; the message says why and what to do."""


def request_stop() -> None:
    """Ask every source to end its partitions at the next poll (a clean, committed stop)."""
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


def _raise(message: str) -> NoReturn:
    raise FlowFailure(message)


def exit_process(message: str) -> NoReturn:
    """Print ``sluice: error: <message>`` and end the process now with exit code 3."""
    sys.stderr.write(f"sluice: error: {message}\n")
    sys.stderr.flush()
    os._exit(3)


_handler: list[Callable[[str], NoReturn]] = [_raise]


def set_failure_handler(handler: Callable[[str], NoReturn]) -> None:
    """What :func:`fail` does (default: raise :class:`FlowFailure`)."""
    _handler[0] = handler


def fail(message: str) -> NoReturn:
    """Stop the flow because of ``message`` (see the module docstring)."""
    _handler[0](message)
