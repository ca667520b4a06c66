"""The fraud cascade's figures: ``python -m perf.cascade_bench [compare] [swap] [notes] --runs 3``.

* models: GBT vs MLP vs cascade on the same held-out set (the served artifact's metrics).
* compare: end-to-end P50/P99 of the cascade flow and of the single-model flow
  (``SLUICE_CASCADE=false``) at 5k and 10k events/s, interleaved in the same
  invocation, each the median of ``--runs`` runs with the spread beside it.
* swap: 5k events/s with a second version promoted mid-run; P99 over the 3
  seconds after the promotion against P99 before it (the hot-swap pause).
* notes: analyst notes on the CPU: LLM notes per second at batch 16, how many
  pass the checks, seconds per batch; the template's cost per note.

Writes ``perf/reports/cascade-<date>.json`` and the ``cascade`` section of
``summary.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dataflows.fraud import CardEvent, EnrichedEvent, cascade_batch, needs_note, note_records, pending_note
from models.fraud_features import parse_profile
from models.fraud_model import load_cascade
from models.fraud_policy import Policy
from models.registry import ModelRegistry
from models.synthetic_transactions import TransactionStream
from models.train_fraud import ensure_trained
from models.train_fraud import main as train_main
from operators.event_windows import WindowStatus
from operators.kafka.records import SourceRecord
from perf.bench import RunConfig, RunResult, describe, run_one
from perf.summary import (
    REPORTS,
    changed_options,
    median_and_spread,
    record,
    record_unless,
    report_stem,
    why_not_recorded,
)
from sluice.local.stack import PROJECT_ROOT
from sluice.settings import FraudSettings
from state.windows import SlidingAggregates, WindowSpec

DEFAULT_DURATION_S = 10.0  # measured seconds per run; shorter runs are smoke runs, not recorded


def _median_spread(values: list[float]) -> tuple[float, list[float]]:
    """The figure (median of the runs) and every run's value beside it."""
    return round(median_and_spread(values)[0], 2), [round(v, 2) for v in values]


def models_table(folder: Path) -> dict[str, Any]:
    m = json.loads((folder / "metrics.json").read_text())
    rows = {}
    for name, prefix in (("gbt", "gbt_"), ("mlp", "mlp_"), ("cascade", "cascade_")):
        rows[name] = {
            k.removeprefix(prefix): m[k]
            for k in m
            if k.startswith(prefix) and not k.startswith(("cascade_us",)) and isinstance(m[k], float | int)
        }
    rows["band"] = {
        "escalated_share": m["escalated_share"],
        "pr_auc_stage1": m["band_pr_auc_stage1"],
        "pr_auc_stage2": m["band_pr_auc_stage2"],
        "pr_auc_combined": m["band_pr_auc_combined"],
        "gru_us_per_event_batched": m["gru_us_per_event_batched"],
    }
    rows["served_stage1"] = m["best_stage1"]
    return rows


def quality_figures(m: dict[str, Any]) -> dict[str, float]:
    """The summary's held-out model figures, from :func:`models_table`."""
    return {
        "pr_auc_mlp": m["mlp"]["pr_auc"],
        "pr_auc_gbt": m["gbt"]["pr_auc"],
        "pr_auc_cascade": m["cascade"]["pr_auc"],
        "escalated_share": m["band"]["escalated_share"],
        "band_pr_auc_stage1": m["band"]["pr_auc_stage1"],
        "band_pr_auc_cascade": m["band"]["pr_auc_combined"],
    }


def readme_models_table(folder: Path) -> str:
    """The README's held-out table (between ``<!-- cascade-models -->`` markers) from a model's ``metrics.json``."""
    m, rows = json.loads((folder / "metrics.json").read_text()), models_table(folder)

    def row(label: str, r: dict[str, Any], cost: str) -> str:
        return (
            f"| {label} | {r['roc_auc']:.4f} | {r['pr_auc']:.4f} | {r['precision_at_review']:.3f} / "
            f"{r['recall_at_review']:.3f} | {r['precision_at_decline']:.3f} / {r['recall_at_decline']:.3f} | {cost} |"
        )

    served = rows["served_stage1"]
    band = rows["band"]
    return "\n".join([
        "| model | ROC-AUC | PR-AUC | precision / recall at review (0.5) | precision / recall at decline (0.9) | batched µs/event (CPU) |",
        "|---|---|---|---|---|---|",
        row("gradient-boosted trees (LightGBM)" + (" (served as stage 1: the better PR-AUC)" if served == "gbt" else ""),
            rows["gbt"], f"{rows['gbt']['us_per_event_batched']:.1f}"),
        row("MLP" + (" (served as stage 1: the better PR-AUC)" if served == "mlp" else ""),
            rows["mlp"], f"{rows['mlp']['us_per_event_batched']:.1f}"),
        row("cascade: stage 1 + GRU on the band", rows["cascade"],
            f"stage 1 + {band['gru_us_per_event_batched']:.1f} for the {100 * band['escalated_share']:.1f}% escalated"),
        "",
        f"On the band it sees (stage-1 score 0.2–0.9 or a fired rule: {100 * band['escalated_share']:.2f}% of events) "
        f"the GRU lifts PR-AUC from {band['pr_auc_stage1']:.4f} (stage 1) to {band['pr_auc_combined']:.4f} (combined). "
        f"Model `{folder.name}`, seed {m['seed']}, {m['train_events']:,} training / {m['test_events']:,} held-out "
        f"events, fraud rate {100 * m['test_fraud_rate']:.2f}%. Generated by `python -m perf.cascade_bench --readme "
        f"README.md` from the served model (`sluice train fraud --seed {m['seed']}` gives the same figures; the "
        "µs vary with the machine).",
    ])  # fmt: skip


def write_readme_models_table(readme: Path, folder: Path) -> None:
    start, end = "<!-- cascade-models -->\n", "\n<!-- /cascade-models -->"
    text = readme.read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(head + start + readme_models_table(folder) + end + tail)


def compare(args: argparse.Namespace, model: str, logs: Path) -> dict[str, Any]:
    runs: dict[str, list[RunResult]] = {}
    for i in range(args.runs):
        for rate in args.rates:
            for system, cascade in (("cascade", "true"), ("single", "false")):
                cfg = RunConfig("fraud", rate, duration_s=args.duration, env={"SLUICE_CASCADE": cascade})
                r = run_one(cfg, model, logs)
                print(f"[{i + 1}/{args.runs}] {system:8s}", describe(r), flush=True)
                runs.setdefault(f"{system}@{rate:.0f}", []).append(r)
    table = {}
    for key, rs in runs.items():
        p50, p50s = _median_spread([r.latency_ms.get("p50", float("nan")) for r in rs])
        p99, p99s = _median_spread([r.latency_ms.get("p99", float("nan")) for r in rs])
        table[key] = {
            "p50_ms": p50,
            "p50_ms_runs": p50s,
            "p99_ms": p99,
            "p99_ms_runs": p99s,
            "decided_share": round(min(r.decided / max(r.sent, 1) for r in rs), 5),
            "flow_cpu_s": [r.cpu_s.get("flow", 0.0) for r in rs],
        }
    return {"table": table, "runs": {k: [_run_json(r) for r in v] for k, v in runs.items()}}


def _run_json(r: RunResult) -> dict[str, Any]:
    return {"latency_ms": r.latency_ms, "sent": r.sent, "decided": r.decided, "cpu_s": r.cpu_s, "marks_s": r.marks_s}


def _window_p99(r: RunResult, start_s: float, end_s: float) -> float:
    lat = [lat for t, lat in r.latency_over_time if start_s <= t < end_s]
    return round(float(np.percentile(lat, 99)), 2) if lat else float("nan")


def swap(args: argparse.Namespace, model: str, logs: Path) -> dict[str, Any]:
    """Promote a second version 8 s into a 5k/s run; compare P99 around the swap with P99 before it."""
    root = logs / "swap-registry"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(ModelRegistry(model).root, root)
    registry = ModelRegistry(root)
    v1 = registry.served()
    assert v1 is not None
    train_main(["--events", "150000", "--seed", "9", "--out", str(root)])
    v2 = next(v for v in registry.versions() if v != v1)
    out = []
    for i in range(args.runs):
        registry.promote(v1, reason="benchmark reset")
        cfg = RunConfig(
            "fraud",
            args.swap_rate,
            duration_s=20.0,
            env={"SLUICE_MODEL_CHECK_S": "0.5"},
            hooks=[("promote", 10.0, lambda: registry.promote(v2, reason="benchmark"))],
        )
        r = run_one(cfg, str(root), logs)
        at = r.marks_s.get("promote", float("nan"))
        before, around = _window_p99(r, at - 6.0, at), _window_p99(r, at, at + 3.0)
        print(f"[{i + 1}/{args.runs}] swap {describe(r)} | p99 before {before} ms, 3 s after the promotion {around} ms")
        out.append({"p99_before_ms": before, "p99_after_swap_ms": around, "decided": r.decided, "sent": r.sent})
    p99, spread = _median_spread([o["p99_after_swap_ms"] for o in out])
    base, base_spread = _median_spread([o["p99_before_ms"] for o in out])
    return {
        "rate": args.swap_rate,
        "p99_ms_3s_after_swap": p99,
        "p99_ms_3s_after_swap_runs": spread,
        "p99_ms_before_swap": base,
        "p99_ms_before_swap_runs": base_spread,
        "lost": sum(o["sent"] - o["decided"] for o in out),
        "runs": out,
    }


def _cases(n_events: int, model: str) -> list[Any]:
    """Reviews and large declines of a generated stream, through the served cascade (no broker)."""
    registry = ModelRegistry(model)
    cascade = load_cascade(registry.folder(registry.served() or ""), device="cpu")
    stream = TransactionStream(5, n_cards=20_000)
    profiles = {c.card_id: parse_profile({k: str(v) for k, v in c.profile().items()}) for c in stream.cards}
    windows: dict[str, SlidingAggregates] = {}
    items = []
    for i, (t, _) in enumerate(itertools.islice(stream, n_events)):
        agg = windows.setdefault(t.card_id, SlidingAggregates(WindowSpec()))
        extra = (t.merchant_category, t.country)
        feats = agg.add(t.event_time_s, t.amount, t.merchant_id, t.event_id, extra)
        if feats is None:
            continue
        event = CardEvent(SourceRecord("tx", 0, i, t.card_id.encode(), b""), t)
        recent = agg.recent_events(t.event_time_s, 32)
        items.append(EnrichedEvent(event, feats, WindowStatus.OK, profiles[t.card_id], None, False, recent))
    settings = FraudSettings()
    scored = cascade_batch(cascade, cascade.version, items, Policy())
    return [pending_note(s, Policy()) for s in scored if needs_note(s, settings)]


def notes(args: argparse.Namespace, model: str) -> dict[str, Any]:
    cases = _cases(60_000, model)
    settings = replace(FraudSettings(), device="cpu", rationale_deadline_s=3600.0)
    started = time.perf_counter()
    template = note_records(cases, settings, use_llm=False)
    template_us = (time.perf_counter() - started) / len(cases) * 1e6
    batches = [cases[i : i + 16] for i in range(0, min(len(cases), 16 * args.note_batches), 16)]
    note_records(batches[0][:2], settings, use_llm=True)  # load the LLM
    seconds, sources, reasons = [], [], []
    for batch in batches:
        fresh = [replace(p, decided_ms=time.time() * 1000) for p in batch]
        t0 = time.perf_counter()
        out = note_records(fresh, settings, use_llm=True)
        seconds.append(time.perf_counter() - t0)
        for r in out:
            body = json.loads(r.value or b"{}")
            sources.append(body["source"])
            if body["not_generated_because"]:
                reasons.append(body["not_generated_because"].split(":")[0])
    accepted = sources.count("llm") / len(sources)
    examples = [json.loads(r.value or b"{}")["rationale"] for r in template[:3]]
    return {
        "cases_in_60k_events": len(cases),
        "llm_notes_per_s_batch16": round(len(sources) / sum(seconds), 2),
        "llm_batch16_seconds_p50": round(statistics.median(seconds), 2),
        "llm_batch16_seconds_max": round(max(seconds), 2),
        "llm_accepted_share": round(accepted, 3),
        "rejected_because": {r: reasons.count(r) for r in sorted(set(reasons))},
        "template_us_per_note": round(template_us, 1),
        "template_examples": examples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", default=["compare", "swap", "notes"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[5000, 10000])
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S)
    parser.add_argument("--swap-rate", type=float, default=5000)
    parser.add_argument("--note-batches", type=int, default=6)
    parser.add_argument("--readme", type=Path, default=None, help="only rewrite this README's held-out model table")
    args = parser.parse_args(argv)
    settings = FraudSettings.from_env()
    model = settings.model_path
    served = ensure_trained(model)
    if args.readme is not None:  # the table and the summary's quality figures, from the same model
        folder = ModelRegistry(model).folder(served)
        write_readme_models_table(args.readme, folder)
        record("cascade", quality_figures(models_table(folder)))
        print(f"held-out table of {served} written into {args.readme}, its figures into the summary")
        return 0
    logs = PROJECT_ROOT / ".stack" / "bench" / "cascade"
    report: dict[str, Any] = {
        "benchmark": "cascade",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": "python -m perf.cascade_bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "model_version": served,
        "models": models_table(ModelRegistry(model).folder(served)),
    }
    if "compare" in args.parts:
        report["compare"] = compare(args, model, logs)
    if "swap" in args.parts:
        report["swap"] = swap(args, model, logs)
    if "notes" in args.parts:
        report["notes"] = notes(args, model)
    REPORTS.mkdir(parents=True, exist_ok=True)
    path = report_stem("cascade").with_suffix(".json")
    path.write_text(json.dumps(report, indent=1))
    figures = quality_figures(report["models"])
    record("cascade", figures)  # model quality: measured on the held-out set, not a timing
    timings: dict[str, float] = {}
    if "compare" in report:
        t = report["compare"]["table"]
        for rate in args.rates:
            k = f"{rate / 1000:g}k"
            timings[f"p99_ms_at_{k}"] = t[f"cascade@{rate:.0f}"]["p99_ms"]
            timings[f"p50_ms_at_{k}"] = t[f"cascade@{rate:.0f}"]["p50_ms"]
            timings[f"single_model_p99_ms_at_{k}"] = t[f"single@{rate:.0f}"]["p99_ms"]
            timings[f"single_model_p50_ms_at_{k}"] = t[f"single@{rate:.0f}"]["p50_ms"]
    if "swap" in report:
        timings["swap_p99_ms"] = report["swap"]["p99_ms_3s_after_swap"]
        timings["p99_ms_before_swap"] = report["swap"]["p99_ms_before_swap"]
    if "notes" in report:
        timings["llm_notes_per_s_cpu"] = report["notes"]["llm_notes_per_s_batch16"]
        timings["llm_note_accepted_share"] = report["notes"]["llm_accepted_share"]
    if timings:
        other = changed_options(parser, args, "duration", "rates", "swap_rate", "note_batches")
        record_unless(why_not_recorded(args.runs, other_load=other), "cascade", timings)
    print(json.dumps(figures | timings, indent=1))
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
