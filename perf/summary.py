"""``perf/reports/summary.json``: the headline figures, written by the benchmarks themselves.

A JSON object of sections (``fraud``, ``chaos``, ``assistant``, ...) holding
plain numbers whose keys carry their units (``p99_ms_at_20k``,
``drain_events_per_s``). A benchmark calls :func:`record` with the figures it
measured; older values stay in ``summary-history.jsonl`` (one line per write,
with the date and the command), so the summary is always the latest and the
history is never lost.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from operators.kafka.connection import profile_problem
from sluice.settings import FlowSettings, SettingsError

REPORTS = Path(__file__).resolve().parent / "reports"
SUMMARY = REPORTS / "summary.json"
HISTORY = REPORTS / "summary-history.jsonl"


def broker_profile(name: str) -> str:
    """An argparse ``type`` for a broker profile option: an unknown one is a usage error naming the option.

    >>> broker_profile("kafka")
    'kafka'
    """
    if problem := profile_problem(name):
        raise argparse.ArgumentTypeError(problem)
    return name


def broker_profiles(names: str) -> list[str]:
    """An argparse ``type`` for a comma-separated list of broker profiles (:func:`broker_profile` each)."""
    return [broker_profile(name) for name in names.split(",")]


def report_stem(kind: str, label: str = "", folder: Path = REPORTS) -> Path:
    """``folder/<kind>-<date>[-<label>]``, the name (without suffix) of a new report; when a report of
    that name exists already (the same benchmark earlier the same day), ``-2``, ``-3``, ... is added, so
    a rerun never overwrites the report it is compared with.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> first = report_stem("drain", "x", folder)
    >>> _ = first.with_suffix(".json").write_text("{}")
    >>> [first.name.endswith("-x"), report_stem("drain", "x", folder).name.endswith("-x-2")]
    [True, True]
    """
    base = f"{kind}-{time.strftime('%Y-%m-%d')}{'-' + label if label else ''}"
    stem, n = folder / base, 1
    while any(stem.with_name(stem.name + ext).exists() for ext in (".json", ".png", ".svg", ".log")):
        n += 1
        stem = folder / f"{base}-{n}"
    return stem


def add_variant_option(parser: argparse.ArgumentParser, settings: type[FlowSettings]) -> None:
    """``--set FIELD=VALUE`` (repeatable): a setting of the flow under test for this variant, checked as it
    is parsed (an unknown field or a bad value is a usage error naming it), collected in ``args.env`` as
    ``SLUICE_*`` variables. A run with any is a variant: it writes its report, never the summary.

    >>> parser = argparse.ArgumentParser()
    >>> from sluice.settings import FraudSettings
    >>> add_variant_option(parser, FraudSettings)
    >>> parser.parse_args(["--set", "max_batch=64", "--set", "max_wait_ms=2"]).env
    {'SLUICE_MAX_BATCH': '64', 'SLUICE_MAX_WAIT_MS': '2'}
    """

    class _Collect(argparse.Action):
        def __call__(
            self, parser: argparse.ArgumentParser, ns: argparse.Namespace, value: Any, opt: Any = None
        ) -> None:
            try:
                setattr(ns, self.dest, {**getattr(ns, self.dest), **settings.overrides([value])})
            except SettingsError as exc:
                parser.error(str(exc))

    parser.add_argument("--set", dest="env", action=_Collect, default={}, metavar="FIELD=VALUE",
                        help=f"a {settings.__name__} field of the flow for this variant (repeatable; not recorded)")  # fmt: skip


def record(
    section: str, figures: Mapping[str, float | int | bool], path: Path = SUMMARY, owns: Iterable[str] = ()
) -> dict[str, float | int]:
    """Merge ``figures`` into ``section`` of the summary (numbers only) and append them to the history.

    ``owns`` names every key the calling benchmark can write: those it did not produce this time are
    removed, so a figure is never left standing beside newer ones from another run it does not belong to.
    Floats keep 6 decimals (a cosine of 0.999976 is not 1.0). The file is replaced whole, never half-written.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "summary.json"
    >>> _ = record("s", {"a_ms": 1.0, "b_ms": 2.0, "c": 0.9999764}, path)
    >>> record("s", {"a_ms": 3.0}, path, owns=("a_ms", "b_ms"))
    {'a_ms': 3.0, 'c': 0.999976}
    """
    clean: dict[str, float | int] = {}
    for key, value in figures.items():
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int | float) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"summary figure {section}.{key} must be a finite number, not {value!r}")
        clean[key] = round(value, 6) if isinstance(value, float) else value
    path.parent.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, float | int]] = json.loads(path.read_text()) if path.exists() else {}
    owned = set(owns)
    kept = {k: v for k, v in summary.get(section, {}).items() if k in clean or k not in owned}
    summary[section] = kept | clean
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(json.dumps(dict(sorted(summary.items())), indent=1, sort_keys=False) + "\n")
    os.replace(scratch, path)
    entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": " ".join(sys.argv), "section": section, **clean}
    with path.with_name(HISTORY.name).open("a") as f:
        f.write(json.dumps(entry) + "\n")
    return dict(summary[section])


MIN_RUNS = 3


def why_not_recorded(runs: int, **variant: object) -> str:
    """Why a benchmark run must leave the summary alone ('' when it may write it): a latency figure is the
    median of at least :data:`MIN_RUNS` runs, and a variant (a label, a changed setting, a smaller load)
    is compared in its own report, never put in the headline.

    >>> why_not_recorded(3, label="", env={})
    ''
    >>> why_not_recorded(1)
    'a figure is the median of at least 3 runs (this run: 1)'
    >>> why_not_recorded(3, label="ab", smoke=True)
    'a variant (label=ab, smoke=True)'
    """
    if runs < MIN_RUNS:
        return f"a figure is the median of at least {MIN_RUNS} runs (this run: {runs})"
    named = [f"{k}={v}" for k, v in variant.items() if v]
    return f"a variant ({', '.join(named)})" if named else ""


def changed_options(parser: argparse.ArgumentParser, args: argparse.Namespace, *dests: str) -> str:
    """The options among ``dests`` set to something other than the parser's default, as a command line gives
    them ('' when all are the defaults): a benchmark's recorded configuration is declared once, in its parser.

    >>> p = argparse.ArgumentParser()
    >>> _ = p.add_argument("--per-user", type=int, default=20), p.add_argument("--seed", type=int, default=7)
    >>> changed_options(p, p.parse_args(["--seed", "3"]), "per_user", "seed"), changed_options(p, p.parse_args([]), "seed")
    ('--seed 3', '')
    """
    return " ".join(
        f"--{dest.replace('_', '-')} {getattr(args, dest)}"
        for dest in dests
        if getattr(args, dest) != parser.get_default(dest)
    )


def record_unless(
    reason: str, section: str, figures: Mapping[str, float | int | bool], owns: Iterable[str] = ()
) -> dict[str, float | int] | None:
    """:func:`record`, or say why not (``reason`` from :func:`why_not_recorded`)."""
    if reason:
        print(f"summary untouched: {reason}")
        return None
    return record(section, figures, owns=owns)


def median_and_spread(values: Sequence[float]) -> tuple[float, float, float]:
    """Median, min and max of repeated measurements (a figure is the median of at least 3 runs).

    >>> median_and_spread([85.0, 223.0, 137.0])
    (137.0, 85.0, 223.0)
    """
    if not values:
        raise ValueError("no measurements")
    return float(statistics.median(values)), float(min(values)), float(max(values))


# (section, key, what it is, the seed's target or "") in the README's benchmark table
HEADLINES: tuple[tuple[str, str, str, str], ...] = (
    ("fraud", "drain_events_per_s", "fraud: drain of a 200k backlog, events/s", ""),
    ("fraud", "drain_cpu_us_per_event", "fraud: CPU per event on that drain, µs", ""),
    ("fraud", "sustained_events_per_s", "fraud: decisions/s out at the highest rate offered with every event out and P99 < 1 s (throughput profile; the grid tops at 20k)", "20,000/s"),
    ("fraud", "p99_ms_at_20k", "fraud: P99 at 20k/s offered, ms (throughput profile)", "35"),
    ("fraud", "added_p99_ms_at_20k", "fraud: P99 the flow adds to the raw passthrough at 20k/s, ms", "30"),
    ("chaos", "events", "exactly-once chaos run: events", ""),
    ("chaos", "kills", "exactly-once chaos run: kill -9s", "≥ 10"),
    ("chaos", "lost", "exactly-once chaos run: lost / duplicated / differing decisions", "0"),
    ("cascade", "pr_auc_cascade", "cascade PR-AUC (held out)", ""),
    ("cascade", "escalated_share", "cascade: share of events sent to the sequence model", ""),
    ("cascade", "p99_ms_at_10k", "cascade: P99 at 10k/s, ms", ""),
    ("cascade", "single_model_p99_ms_at_10k", "single model: P99 at 10k/s, ms", ""),
    ("cascade", "swap_p99_ms", "hot swap: P99 in the 3 s after a promotion, ms", ""),
    ("assistant", "retrieval_p99_ms_1500_sessions", "assistant: retrieval-path P99 at 1,500 sessions, ms", "110"),
    ("assistant", "recall_at_3", "assistant: recall@3 on user-style questions", "0.95"),
    ("assistant", "answer_correct_share", "assistant: correct answers (judged)", "0.80"),
    ("assistant", "offtopic_refused_share", "assistant: off-topic questions answered \"not found\" (30 held out)", ""),
    ("assistant", "burst200_within_deadline_share", "assistant: 200-question burst answered within deadline", "1.0"),
    ("personalize", "p99_ms_at_5k", "personalization: P99 at 5,000 requests/s, ms", "80"),
    ("personalize", "achieved_req_per_s_at_5k", "personalization: requests/s answered at 5,000 offered", "5,000"),
    ("personalize", "hit_rate_at_10", "personalization: HitRate@10 (popularity: see its section)", ""),
    ("review", "added_p99_ms_decision_path", "review chains: P99 added to the decision path, ms", "5"),
    ("review", "verdict_to_final_p99_ms", "review chains: verdict to final decision P99, ms", ""),
    ("observe", "metrics_overhead_share", "observability: drain throughput lost to metrics", "< 0.03"),
)  # fmt: skip


def readme_table(summary: Mapping[str, Mapping[str, float | int]]) -> str:
    """The README's benchmark table: each headline figure of ``summary`` that was measured.

    >>> print(readme_table({"chaos": {"lost": 0, "duplicated": 0, "differing": 0}}))
    | figure | target | measured |
    |---|---|---|
    | exactly-once chaos run: lost / duplicated / differing decisions | 0 | 0 / 0 / 0 |
    """
    rows = ["| figure | target | measured |", "|---|---|---|"]
    for section, key, what, target in HEADLINES:
        figures = summary.get(section, {})
        if key not in figures:
            continue
        value = figures[key]
        shown = _number(value)
        if section == "chaos" and key == "lost":
            shown = f"{figures['lost']} / {figures.get('duplicated', '?')} / {figures.get('differing', '?')}"
        rows.append(f"| {what} | {target or '—'} | {shown} |")
    return "\n".join(rows)


def _number(value: float | int) -> str:
    """
    >>> _number(11227.4), _number(90.25), _number(0.9211), _number(3)
    ('11,227', '90.2', '0.9211', '3')
    """
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.4g}"


def update_readme(readme: Path, summary_path: Path = SUMMARY) -> None:
    """Replace the table between ``<!-- benchmarks -->`` and ``<!-- /benchmarks -->`` in ``readme``."""
    text = readme.read_text()
    start, end = "<!-- benchmarks -->\n", "<!-- /benchmarks -->"
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start.strip()} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    table = readme_table(json.loads(summary_path.read_text()))
    readme.write_text(f"{head}{start}{table}\n{end}{tail}")


if __name__ == "__main__":  # python -m perf.summary README.md
    update_readme(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md"))
