"""The Grafana dashboard of the flows, generated from code: ``python -m sluice.dashboard`` writes
``deploy/grafana/dashboards/sluice.json`` (a test fails when the file is stale or a panel names a metric the
code does not define).

One row per flow; every row has the same core panels (throughput, lag, per-stage latency with the flow's
seed SLO drawn as a threshold, dead letters, alarms) plus the panels of what that flow has (decisions and
exactly-once commits for fraud, the live index and the LLM for the assistant, the item replicas for
personalization). Queries aggregate over processes (``sum by``), so a multi-process flow is one line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards" / "sluice.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "1m"


@dataclass(frozen=True)
class FlowRow:
    """A flow's row: its name, its SLO (target and the stage it is measured at) and its extra panels."""

    flow: str
    slo_ms: float
    slo_stage: str
    extra: list[dict[str, Any]] = field(default_factory=list)


def _panel(
    title: str,
    targets: list[tuple[str, str]],
    unit: str = "short",
    threshold: float | None = None,
    kind: str = "timeseries",
) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "custom": {}}
    if threshold is not None:
        defaults["thresholds"] = {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}, {"color": "red", "value": threshold}],
        }
        defaults["custom"]["thresholdsStyle"] = {"mode": "line"}
    return {
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def _quantiles(metric: str, selector: str, by: str, label: str = "") -> list[tuple[str, str]]:
    """P50 and P99 of histogram ``metric`` per ``by`` label, over the last minute."""
    return [
        (
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}[{RATE}])))",
            f"{{{{{by}}}}}{label} p{int(q * 100)}",
        )
        for q in (0.5, 0.99)
    ]


def core_panels(row: FlowRow) -> list[dict[str, Any]]:
    f = f'flow="{row.flow}"'
    slo = f'{f},stage="{row.slo_stage}"'
    return [
        _panel(
            "Throughput (records/s)",
            [
                (f"sum by (topic) (rate(sluice_source_records_total{{{f}}}[{RATE}]))", "in {{topic}}"),
                (f"sum by (topic) (rate(sluice_sink_records_total{{{f}}}[{RATE}]))", "out {{topic}}"),
            ],
        ),
        _panel(
            "Input lag",
            [
                (f"sum by (topic) (sluice_source_lag_records{{{f}}})", "records {{topic}}"),
                (f"max by (topic) (sluice_source_lag_seconds{{{f}}})", "seconds {{topic}}"),
            ],
        ),
        _panel(
            f"Event age per stage (SLO {row.slo_ms:g} ms at {row.slo_stage})",
            _quantiles("sluice_stage_age_ms", f, "stage"),
            "ms",
            row.slo_ms,
        ),
        _panel("Time in stage per call", _quantiles("sluice_stage_duration_ms", f, "stage"), "ms"),
        _panel(
            "Items per stage (/s)", [(f"sum by (stage) (rate(sluice_stage_items_total{{{f}}}[{RATE}]))", "{{stage}}")]
        ),
        _panel(
            "Micro-batch size and wait",
            [
                *_quantiles("sluice_batch_size", f, "stage", " size"),
                *_quantiles("sluice_batch_wait_ms", f, "stage", " wait ms"),
            ],
        ),
        _panel("Model inference per call", _quantiles("sluice_model_inference_ms", f, "version"), "ms"),
        _panel(
            "Feature store: cache hits, fallbacks, circuit",
            [
                (
                    f'sum by (namespace) (rate(sluice_feature_store_lookups_total{{{f},result="hit"}}[{RATE}])) / '
                    f"sum by (namespace) (rate(sluice_feature_store_lookups_total{{{f}}}[{RATE}]))",
                    "hit rate {{namespace}}",
                ),
                (
                    f'sum by (namespace) (rate(sluice_feature_store_lookups_total{{{f},result="down"}}[{RATE}])) / '
                    f"sum by (namespace) (rate(sluice_feature_store_lookups_total{{{f}}}[{RATE}]))",
                    "fallback {{namespace}}",
                ),
                (f"max by (namespace) (sluice_feature_store_circuit_open{{{f}}})", "circuit open {{namespace}}"),
            ],
            "percentunit",
        ),
        _panel("Lookup time per batch (cache + Redis)", _quantiles("sluice_lookup_duration_ms", f, "stage"), "ms"),
        _panel(
            "Dead letters by reason (/s)",
            [(f"sum by (step, reason) (rate(sluice_dead_letters_total{{{f}}}[{RATE}]))", "{{step}}: {{reason}}")],
        ),
        _panel(
            "SLO burn: share of events over the target",
            [
                (
                    f'1 - sum(rate(sluice_stage_age_ms_bucket{{{slo},le="{float(row.slo_ms)}"}}[5m])) / '
                    f"sum(rate(sluice_stage_age_ms_count{{{slo}}}[5m]))",
                    "over target",
                )
            ],
            "percentunit",
            0.01,
        ),
        _panel(
            "Alarms firing and drift (PSI)",
            [
                (f"sum by (alarm, subject) (sluice_alarm_active{{{f}}}) > 0", "{{alarm}} {{subject}}"),
                (f"max by (model, feature) (sluice_drift_psi{{{f}}})", "PSI {{model}} {{feature}}"),
            ],
            "short",
            0.2,
        ),
    ]


FRAUD = FlowRow("fraud", 35.0, "score", [
    _panel("Decisions by outcome (/s)",
           [('sum by (outcome) (rate(sluice_decisions_total{flow="fraud"}[1m]))', "{{outcome}}")]),
    _panel("Exactly-once: commit, flush, aborted", [
        *_quantiles("sluice_commit_ms", 'flow="fraud"', "flow"),
        *_quantiles("sluice_sink_flush_ms", 'flow="fraud"', "flow"),
        ('sum(rate(sluice_transactions_total{flow="fraud",result="aborted"}[1m]))', "aborted/s"),
    ], "ms"),
])  # fmt: skip
ASSISTANT = FlowRow("assistant", 110.0, "kb_search", [
    _panel("Knowledge index: size and freshness", [
        ('sum by (index, unit) (sluice_index_size{flow="assistant"})', "{{index}} {{unit}}"),
        ('max by (index) (sluice_index_freshness_seconds{flow="assistant"})', "stale s {{index}}"),
        ('sum by (index) (sluice_index_backlog{flow="assistant"})', "backlog {{index}}"),
    ]),
    _panel("LLM: tokens/s and queue", [
        ('sum by (model) (rate(sluice_llm_tokens_total{flow="assistant"}[1m]))', "tokens/s {{model}}"),
        ('sum by (stage) (sluice_async_queue_depth{flow="assistant"})', "queue {{stage}}"),
    ]),
])  # fmt: skip
PERSONALIZE = FlowRow("personalize", 80.0, "catalogue_query", [
    _panel("Item index replicas: size and update delay", [
        ('sum by (index) (sluice_index_size{flow="personalize"})', "items {{index}}"),
        ('max by (index) (sluice_index_freshness_seconds{flow="personalize"})', "update delay s {{index}}"),
    ]),
])  # fmt: skip
ROWS = (FRAUD, ASSISTANT, PERSONALIZE)


def _laid_out(rows: tuple[FlowRow, ...]) -> Iterator[dict[str, Any]]:
    y, next_id = 0, 1
    for row in rows:
        yield {"type": "row", "title": row.flow, "collapsed": False, "id": next_id,
               "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}  # fmt: skip
        next_id, y = next_id + 1, y + 1
        for i, panel in enumerate(core_panels(row) + row.extra):
            yield {**panel, "id": next_id, "gridPos": {"h": 8, "w": 8, "x": 8 * (i % 3), "y": y + 8 * (i // 3)}}
            next_id += 1
        y += 8 * -(-len(core_panels(row) + row.extra) // 3)


def dashboard() -> dict[str, Any]:
    return {
        "title": "Sluice flows",
        "uid": "sluice-flows",
        "tags": ["sluice"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"},
        "panels": list(_laid_out(ROWS)),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m sluice.dashboard``: write the dashboard JSON (``make dashboard`` does this)."""
    import argparse

    argparse.ArgumentParser(
        prog="python -m sluice.dashboard", description=f"Write the Grafana dashboard of every flow to {DASHBOARD}."
    ).parse_args(argv)
    DASHBOARD.parent.mkdir(parents=True, exist_ok=True)
    DASHBOARD.write_text(render())
    print(f"wrote {DASHBOARD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
