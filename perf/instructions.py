"""Instructions per event: a before/after measure of the fraud flow's own work that the machine's noise cannot move.

    python -m perf.instructions                      # this checkout: instructions per event, a report
    python -m perf.instructions --label after        # named, to set beside a run of the code before

Runs :mod:`perf.fraud_inprocess` (the real flow, Kafka replaced by memory, its own Redis) under
valgrind's callgrind, counting only what executes inside Bytewax's ``run_main``: the flow's steps,
not the imports, the model loading or the input's generation. Micro-batches are closed by size only
(their deadlines set past the run's length), so every run of the same code makes the same batches and
executes the same instructions: three runs of one commit spread over 0.17%, where the drain's CPU per
event moves 10-20% between runs on this shared 2-core machine (``perf.drain``). The analysts' notes are
off (``rationales_topic`` empty): that step batches on its own thread by a fixed 50 ms deadline, so its
work would depend on time, and callgrind would not count it as the flow's.

What it does not see: the cost of memory. An instruction that waits for a cache miss counts once, so
a change that touches fewer objects is worth more than its instruction count says, and the drain
(``perf.drain``, alternated runs of both versions) remains the judge of time. Under valgrind the flow
runs ~50x slower; 5,000 events take about three minutes. Needs ``valgrind`` (Debian: ``apt install
valgrind``); a development tool, it writes a report (``perf/reports/instructions-<date>[-label].json``)
and no summary figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from perf.summary import report_stem
from sluice.local.stack import PROJECT_ROOT

COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")
NEVER_MS = "100000000"  # a micro-batch deadline past any run's length: batches close by size only


def callgrind_command(events: int, out_file: Path, settings: list[str]) -> list[str]:
    """The valgrind command line that counts the in-process flow's instructions inside ``run_main``.

    >>> cmd = callgrind_command(5000, Path("/tmp/x.out"), ["max_batch=64"])
    >>> cmd[:3], cmd[-4:]
    (['valgrind', '--tool=callgrind', '--toggle-collect=*run_main*'], ['--set', 'rationales_topic=', '--set', 'max_batch=64'])
    """
    sets = [f"max_wait_ms={NEVER_MS}", f"stage2_max_wait_ms={NEVER_MS}", "rationales_topic=", *settings]
    return [
        "valgrind",
        "--tool=callgrind",
        "--toggle-collect=*run_main*",
        f"--callgrind-out-file={out_file}",
        sys.executable,
        "-m",
        "perf.fraud_inprocess",
        "--events",
        str(events),
        *[arg for kv in sets for arg in ("--set", kv)],
    ]


def collected(log: str) -> int:
    """The instruction count callgrind reports for what it collected.

    >>> collected("==1== Events    : Ir\\n==1== Collected : 1102357916\\n==1== I   refs: 1,102,357,916")
    1102357916
    """
    found = COLLECTED.search(log)
    if found is None:
        raise RuntimeError(f"callgrind reported no collected count; its output ends: {log[-600:]}")
    return int(found.group(1))


def measure(events: int, settings: list[str]) -> dict[str, object]:
    """Run the flow over ``events`` events under callgrind; its instructions, in all and per event."""
    with tempfile.TemporaryDirectory(prefix="sluice-instructions-") as scratch:
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        started = time.monotonic()
        done = subprocess.run(
            callgrind_command(events, Path(scratch) / "callgrind.out", settings),
            cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"the flow failed under valgrind (exit {done.returncode}): {done.stderr[-1500:]}")
        total = collected(done.stderr)
    return {
        "events": events,
        "instructions": total,
        "instructions_per_event": round(total / events),
        "settings": settings,
        "wall_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.instructions", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="events through the flow (default 5000)")
    parser.add_argument("--label", default="", help="added to the report's name")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a FraudSettings field")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt install valgrind)", file=sys.stderr)
        return 2
    figures = measure(args.events, args.set)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    report = {"benchmark": "instructions", "commit": commit.stdout.strip(), **figures}
    path = report_stem("instructions", args.label).with_suffix(".json")
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{figures['instructions_per_event']:,} instructions per event ({args.events:,} events); report {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
