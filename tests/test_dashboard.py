"""The Grafana dashboard and the Prometheus/Grafana services: the committed JSON is the generated one, every
query names metrics the code defines, the SLO lines are the flows' settings, and the compose files point at
files that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from operators.metrics import FAMILIES, MS_BUCKETS
from sluice.dashboard import DASHBOARD, ROWS, render
from sluice.settings import AssistantSettings, FraudSettings, PersonalizeSettings

ROOT = Path(__file__).resolve().parents[1]
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


def test_the_committed_dashboard_is_the_generated_one():
    """`python -m sluice.dashboard` rewrites it; a stale file fails here."""
    assert DASHBOARD.read_text() == render()


def test_every_query_names_metrics_the_code_defines():
    defined = {name: fam.kind for name, fam in FAMILIES.items()}
    for title, expr in _queries():
        for name in re.findall(r"\b(sluice_[a-z0-9_]+)", expr):
            base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
            if base != name:
                assert defined.get(base) == "histogram", f"{title}: {name} is not a histogram's series"
            else:
                assert name in defined, f"{title}: {name} is not defined in operators/metrics.py"
        for le in re.findall(r'le="([0-9.]+)"', expr):
            assert float(le) in MS_BUCKETS, f"{title}: le={le} is not a bucket edge"


def test_one_row_per_flow_with_its_slo_drawn_as_a_threshold():
    board = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["fraud", "assistant", "personalize"]
    targets = {"fraud": FraudSettings().slo_ms, "assistant": AssistantSettings().slo_ms,
               "personalize": PersonalizeSettings().slo_ms}  # fmt: skip
    for row in ROWS:
        assert row.slo_ms == targets[row.flow]
    slo_panels = [p for p in board["panels"] if p["title"].startswith("Event age per stage")]
    lines = [p["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] for p in slo_panels]
    assert lines == [targets["fraud"], targets["assistant"], targets["personalize"]]
    assert all(p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line" for p in slo_panels)


def test_compose_provisions_prometheus_and_grafana_from_the_repo():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert compose["prometheus"]["image"].startswith("prom/prometheus")
    assert compose["grafana"]["image"].startswith("grafana/grafana")
    for service in ("prometheus", "grafana"):
        for volume in compose[service]["volumes"]:
            assert (ROOT / volume.split(":")[0]).exists(), volume
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert {"host.docker.internal:9100", "host.docker.internal:9110", "host.docker.internal:9120"} <= set(targets)
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    board = json.loads(DASHBOARD.read_text())
    assert all(p["datasource"]["uid"] == uid for p in board["panels"] if p["type"] != "row")


def test_every_metric_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in FAMILIES if f"`{name}`" not in readme]
    assert not missing, f"document these in README.md (Observability): {missing}"
