"""``perf/reports/summary.json``: the headline figures, written by the benchmarks themselves.

A JSON object of sections (``fraud``, ``chaos``, ``assistant``, ...) holding
plain numbers whose keys carry their units (``p99_ms_at_20k``,
``drain_events_per_s``). A benchmark calls :func:`record` with the figures it
measured; older values stay in ``summary-history.jsonl`` (one line per write,
with the date and the command), so the summary is always the latest and the
history is never lost.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPORTS = Path(__file__).resolve().parent / "reports"
SUMMARY = REPORTS / "summary.json"
HISTORY = REPORTS / "summary-history.jsonl"


def record(section: str, figures: Mapping[str, float | int | bool], path: Path = SUMMARY) -> dict[str, float | int]:
    """Merge ``figures`` into ``section`` of the summary (numbers only) and append them to the history."""
    clean: dict[str, float | int] = {}
    for key, value in figures.items():
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int | float) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"summary figure {section}.{key} must be a finite number, not {value!r}")
        clean[key] = round(value, 4) if isinstance(value, float) else value
    path.parent.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, float | int]] = json.loads(path.read_text()) if path.exists() else {}
    summary.setdefault(section, {}).update(clean)
    path.write_text(json.dumps(dict(sorted(summary.items())), indent=1, sort_keys=False) + "\n")
    entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv), "section": section, **clean}
    with path.with_name(HISTORY.name).open("a") as f:
        f.write(json.dumps(entry) + "\n")
    return dict(summary[section])


def median_and_spread(values: Sequence[float]) -> tuple[float, float, float]:
    """Median, min and max of repeated measurements (a figure is the median of at least 3 runs).

    >>> median_and_spread([85.0, 223.0, 137.0])
    (137.0, 85.0, 223.0)
    """
    if not values:
        raise ValueError("no measurements")
    return float(statistics.median(values)), float(min(values)), float(max(values))
