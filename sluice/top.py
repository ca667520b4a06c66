"""``sluice top``: a live terminal view of running flows, read from their ``/metrics`` endpoints.

    sluice top                      # 127.0.0.1:$SLUICE_METRICS_PORT .. +3, else 9100, 9110, 9120 .. +3
    sluice top 9100 host2:9100      # ports, host:port or full URLs
    sluice top --once --svg top.svg # one frame (after two scrapes), also saved as an SVG screenshot

Each endpoint is scraped every ``--interval`` seconds; endpoints of the same flow
(the processes of a multi-process flow) are added together. Rates come from
counter differences over the last few seconds, P50/P99 from the histogram
buckets filled over the last ``--window`` seconds (the whole run until then),
so the view shows what the flow does now, not since it started. Stages are
listed upstream first (the order the flow built them). No Prometheus needed.
"""

from __future__ import annotations

import argparse
import math
import os
import time
import urllib.request
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from operators.metrics import histogram_quantile

Labels = dict[str, str]


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Labels
    value: float


@dataclass
class Scrape:
    """Every sample of every endpoint that answered, at one moment."""

    at: float
    samples: list[Sample]
    down: list[str] = field(default_factory=list)

    def select(self, name: str, **match: str) -> list[Sample]:
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in match.items())]

    def total(self, name: str, **match: str) -> float:
        return sum(s.value for s in self.select(name, **match))

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in self.select(name, **match):
            key = s.labels.get(label, "")
            out[key] = out.get(key, 0.0) + s.value
        return out

    def buckets(self, name: str, **match: str) -> list[tuple[float, float]]:
        """Cumulative ``(upper bound, count)`` of histogram ``name``, summed over the matching series."""
        merged: dict[float, float] = {}
        for s in self.select(f"{name}_bucket", **match):
            le = float(s.labels["le"])
            merged[le] = merged.get(le, 0.0) + s.value
        return sorted(merged.items())

    def flows(self) -> list[str]:
        return sorted({s.labels["flow"] for s in self.samples if "flow" in s.labels})


def parse(text: str) -> list[Sample]:
    return [
        Sample(s.name, dict(s.labels), float(s.value))
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


def target_url(target: str) -> str:
    """``9100`` -> ``http://127.0.0.1:9100/metrics``; ``host:9100`` -> ``http://host:9100/metrics``; URLs stay.

    >>> target_url("9100"), target_url("h:9101"), target_url("http://h/metrics")
    ('http://127.0.0.1:9100/metrics', 'http://h:9101/metrics', 'http://h/metrics')
    """
    if target.startswith(("http://", "https://")):
        return target
    if target.isdigit():
        target = f"127.0.0.1:{target}"
    return f"http://{target}/metrics"


def scrape(urls: Sequence[str], timeout_s: float = 0.8) -> Scrape:
    samples: list[Sample] = []
    down = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - the user's own endpoints
                samples += parse(resp.read().decode())
        except (OSError, ValueError):
            down.append(url)
    return Scrape(time.time(), samples, down)


def _delta(now: list[tuple[float, float]], then: list[tuple[float, float]]) -> list[tuple[float, float]]:
    before = dict(then)
    return [(le, count - before.get(le, 0.0)) for le, count in now]


def _fmt(value: float, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}{unit}"
    if abs(value) >= 10:
        return f"{value:.1f}{unit}"
    return f"{value:.2f}{unit}"


@dataclass
class View:
    """Scrapes kept for rates and windowed quantiles; :meth:`render` draws the latest."""

    urls: list[str]
    window_s: float = 10.0
    rate_s: float = 3.0
    history: deque[Scrape] = field(default_factory=lambda: deque(maxlen=120))

    def add(self, frame: Scrape) -> None:
        self.history.append(frame)

    def _before(self, seconds: float) -> Scrape | None:
        """The newest older scrape at least ``seconds`` old, else the oldest one (None with only one)."""
        if len(self.history) < 2:
            return None
        now = self.history[-1].at
        candidates = [f for f in list(self.history)[:-1] if now - f.at >= seconds]
        return candidates[-1] if candidates else self.history[0]

    def rate(self, name: str, **match: str) -> float:
        then = self._before(self.rate_s)
        if then is None:
            return float("nan")
        now = self.history[-1]
        return max(0.0, now.total(name, **match) - then.total(name, **match)) / max(1e-6, now.at - then.at)

    def rates_by(self, name: str, label: str, **match: str) -> dict[str, float]:
        then = self._before(self.rate_s)
        now = self.history[-1]
        current = now.by(name, label, **match)
        if then is None:
            return dict.fromkeys(current, float("nan"))
        before = then.by(name, label, **match)
        dt = max(1e-6, now.at - then.at)
        return {k: max(0.0, v - before.get(k, 0.0)) / dt for k, v in current.items()}

    def quantiles(self, name: str, qs: Sequence[float], **match: str) -> list[float]:
        """Quantiles of what ``name`` observed in the last ``window_s`` (all of it when nothing new came)."""
        now = self.history[-1].buckets(name, **match)
        then = self._before(self.window_s)
        recent = _delta(now, then.buckets(name, **match)) if then is not None else now
        use = recent if recent and recent[-1][1] > 0 else now
        return [histogram_quantile(q, use) for q in qs]

    def render(self) -> Group:
        frame = self.history[-1]
        parts: list[Panel | Text] = [
            Text.assemble(
                ("sluice top", "bold"),
                f"  {len(self.urls) - len(frame.down)}/{len(self.urls)} endpoints  ",
                time.strftime("%H:%M:%S", time.localtime(frame.at)),
            )
        ]
        flows = frame.flows()
        if not flows:
            parts.append(Text("no flow answers yet: start one with SLUICE_METRICS_PORT set", style="yellow"))
        parts += [self._flow_panel(flow) for flow in flows]
        if frame.down:
            shown = " ".join(frame.down[:3]) + (f" and {len(frame.down) - 3} more" if len(frame.down) > 3 else "")
            parts.append(Text(f"not answering: {shown}", style="dim"))
        return Group(*parts)

    def _flow_panel(self, flow: str) -> Panel:
        frame = self.history[-1]
        f = {"flow": flow}
        processes = len(frame.select("sluice_flow_info", **f))
        cpu = self.rate("process_cpu_seconds_total") if len(frame.flows()) == 1 else float("nan")
        lag_records = frame.total("sluice_source_lag_records", **f)
        lag_seconds = max(frame.by("sluice_source_lag_seconds", "partition", **f).values(), default=0.0)
        dead_total = frame.total("sluice_dead_letters_total", **f)
        summary = Text.assemble(
            ("input ", "dim"), f"{_fmt(self.rate('sluice_source_records_total', **f))}/s  ",
            ("lag ", "dim"), f"{_fmt(lag_records)} rec / {_fmt(lag_seconds)} s  ",
            ("output ", "dim"), f"{_fmt(self.rate('sluice_sink_records_total', **f))}/s  ",
            ("DLQ ", "dim"), f"{_fmt(self.rate('sluice_dead_letters_total', **f))}/s ({dead_total:,.0f} total)  ",
            ("CPU ", "dim"), f"{_fmt(100 * cpu)}%",
        )  # fmt: skip
        lines: list[Text | Table] = [summary]
        outcomes = self.rates_by("sluice_decisions_total", "outcome", **f)
        if outcomes:
            lines.append(
                Text("decisions  " + "  ".join(f"{k} {_fmt(v)}/s" for k, v in sorted(outcomes.items())), style="cyan")
            )
        lines.append(self._stages(f))
        lines += self._models(f) + self._stores(f) + self._indexes(f)
        lines.append(self._alarms(f))
        return Panel(Group(*lines), title=f"[bold]{flow}[/bold]  {processes} process(es)", title_align="left")

    def _stages(self, f: Labels) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for col in ("stage", "items/s", "call p50 ms", "call p99 ms", "age p50 ms", "age p99 ms", "batch p50"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        rates = self.rates_by("sluice_stage_items_total", "stage", **f)
        order = self.history[-1].by("sluice_stage_order", "stage", **f)
        rows = []
        for stage, rate in rates.items():
            call = self.quantiles("sluice_stage_duration_ms", (0.5, 0.99), stage=stage, **f)
            age = self.quantiles("sluice_stage_age_ms", (0.5, 0.99), stage=stage, **f)
            batch = self.quantiles("sluice_batch_size", (0.5,), stage=stage, **f)[0]
            rows.append((order.get(stage, math.inf), stage, rate, call, age, batch))
        for _, stage, rate, call, age, batch in sorted(rows, key=lambda r: (r[0], r[1])):
            table.add_row(stage, _fmt(rate), _fmt(call[0]), _fmt(call[1]), _fmt(age[0]), _fmt(age[1]), _fmt(batch))
        return table

    def _models(self, f: Labels) -> list[Text]:
        out = []
        frame = self.history[-1]
        keys = {(s.labels["model"], s.labels["version"], s.labels["device"])
                for s in frame.select("sluice_model_rows_total", **f)}  # fmt: skip
        for model, version, device in sorted(keys):
            m = {"model": model, "version": version, "device": device, **f}
            p50, p99 = self.quantiles("sluice_model_inference_ms", (0.5, 0.99), **m)
            rows = self.rate("sluice_model_rows_total", **m)
            out.append(Text(f"model {model} {version} on {device}: p50 {_fmt(p50)} ms  p99 {_fmt(p99)} ms  "
                            f"{_fmt(rows)} rows/s", style="magenta"))  # fmt: skip
        tokens = self.rates_by("sluice_llm_tokens_total", "model", **f)
        for model, rate in sorted(tokens.items()):
            out.append(Text(f"LLM {model}: {_fmt(rate)} tokens/s", style="magenta"))
        for stage, depth in sorted(self.history[-1].by("sluice_async_queue_depth", "stage", **f).items()):
            out.append(Text(f"queue {stage}: {depth:.0f} waiting", style="magenta"))
        return out

    def _stores(self, f: Labels) -> list[Text]:
        out = []
        frame = self.history[-1]
        for ns in sorted({s.labels["namespace"] for s in frame.select("sluice_feature_store_lookups_total", **f)}):
            by = self.rates_by("sluice_feature_store_lookups_total", "result", namespace=ns, **f)
            total = sum(v for v in by.values() if not math.isnan(v))
            hit = 100 * by.get("hit", 0.0) / total if total else float("nan")
            down = 100 * by.get("down", 0.0) / total if total else float("nan")
            circuit = "OPEN" if frame.total("sluice_feature_store_circuit_open", namespace=ns, **f) else "closed"
            out.append(Text(f"store {ns}: {_fmt(total)} lookups/s  cache hit {_fmt(hit)}%  fallback {_fmt(down)}%  "
                            f"circuit {circuit}", style="red" if circuit == "OPEN" else "green"))  # fmt: skip
        return out

    def _indexes(self, f: Labels) -> list[Text]:
        frame = self.history[-1]
        out = []
        for index in sorted({s.labels["index"] for s in frame.select("sluice_index_backlog", **f)}):
            sizes = frame.by("sluice_index_size", "unit", index=index, **f)
            fresh = frame.total("sluice_index_freshness_seconds", index=index, **f)
            shown = "  ".join(f"{v:,.0f} {k}" for k, v in sorted(sizes.items()))
            backlog = frame.total("sluice_index_backlog", index=index, **f)
            out.append(Text(f"index {index}: {shown}  backlog {backlog:,.0f}  stale {_fmt(fresh)} s", style="blue"))
        return out

    def _alarms(self, f: Labels) -> Text:
        firing = [s for s in self.history[-1].select("sluice_alarm_active", **f) if s.value > 0]
        psi = self.history[-1].select("sluice_drift_psi", **f)
        drift = "  ".join(
            f"{s.labels['feature']} {s.value:.3f}" for s in sorted(psi, key=lambda s: s.labels["feature"])
        )
        if not firing:
            return Text("alarms: none" + (f"   drift PSI {drift}" if drift else ""), style="green")
        names = ", ".join(f"{s.labels['alarm']} ({s.labels['subject']})" for s in firing)
        return Text(f"ALARMS FIRING: {names}" + (f"   drift PSI {drift}" if drift else ""), style="bold red")


CONVENTION = (9100, 9110, 9120)  # fraud, assistant, personalization (deploy/prometheus/prometheus.yml)


def default_targets(env: dict[str, str] | None = None) -> list[str]:
    """Local ports ``SLUICE_METRICS_PORT`` to +3 when it is set, else the conventional base ports of the
    three flows (9100, 9110, 9120) to +3 each: flows of up to four processes.

    >>> default_targets({"SLUICE_METRICS_PORT": "9300"})
    ['9300', '9301', '9302', '9303']
    >>> len(default_targets({}))
    12
    """
    env = dict(os.environ) if env is None else env
    bases = [int(env["SLUICE_METRICS_PORT"])] if int(env.get("SLUICE_METRICS_PORT") or 0) else list(CONVENTION)
    return [str(base + i) for base in bases for i in range(4)]


def frames(view: View, interval_s: float, count: int | None = None) -> Iterable[Group]:
    n = 0
    while count is None or n < count:
        started = time.monotonic()
        view.add(scrape(view.urls))
        yield view.render()
        n += 1
        if count is None or n < count:
            time.sleep(max(0.0, interval_s - (time.monotonic() - started)))


def run(args: argparse.Namespace) -> int:
    view = View([target_url(t) for t in (args.targets or default_targets())], window_s=args.window)
    if args.once:
        console = Console(record=bool(args.svg), width=args.width)
        *_, last = frames(view, args.interval, count=2)
        console.print(last)
        if args.svg:
            console.save_svg(args.svg, title="sluice top")
        return 0
    with Live(console=Console(), auto_refresh=False, screen=False) as live:
        for frame in frames(view, args.interval):
            live.update(frame, refresh=True)
    return 0
