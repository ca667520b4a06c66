"""The fraud model's lifecycle from the command line: the registry, shadow reports, retraining from the feature log.

    sluice model list                       # versions, which is served, which is shadowed, their metrics
    sluice model promote VERSION            # a running flow switches at its next checkpoint
    sluice model rollback                   # serve the previously served version again
    sluice model shadow VERSION | unshadow  # score a candidate beside the served one (shadow-decisions)
    sluice model shadow-report              # served vs shadow on the same events: agreement, score shift, latency
    sluice train fraud --from-log           # retrain on the flow's logged features joined with late labels

The registry is the folder ``SLUICE_MODEL_PATH`` names (:mod:`models.registry`).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from models.registry import ModelRegistry, ModelUnusable
from operators.kafka.admin import read_all
from sluice.settings import FraudSettings


def _registry(args: argparse.Namespace) -> ModelRegistry:
    return ModelRegistry(args.path or FraudSettings.from_env().model_path)


def cmd_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    rows = registry.describe()
    if not rows:
        print(f"no model versions in {registry.root}: train one with `sluice train fraud`")
        return 1
    print(f"{'version':34} {'':9} {'stage 1':7} {'PR-AUC gbt/mlp/cascade':24} {'escalated':9} trained on")
    for v in rows:
        m, data = v.metrics, v.manifest.get("training_data", {})
        mark = "served" if v.served else "shadow" if v.candidate else ""
        pr = f"{m.get('gbt_pr_auc', 0):.3f}/{m.get('mlp_pr_auc', 0):.3f}/{m.get('cascade_pr_auc', 0):.3f}"
        print(
            f"{v.version:34} {mark:9} {m.get('best_stage1', '?'):7} {pr:24} {m.get('escalated_share', 0):<9.3f} "
            f"{data.get('kind', '?')}, {data.get('events', 0):,} events"
        )
    return 0


# when a promote or rollback takes effect (operators/versioned_batch.py)
SWITCH = "running flows switch at their next epoch end once it is loaded (-s seconds; 10 s without -r)"


def _check_loads(registry: ModelRegistry, version: str) -> None:
    """Load ``version`` as a flow would (on the CPU): a version that does not load is never switched to."""
    from models.fraud_model import load_cascade

    folder = registry.folder(version)  # an unknown version is its own one-line error
    try:
        load_cascade(folder, "cpu")
    except Exception as exc:
        raise ModelUnusable(f"{version} does not load ({exc}); nothing changed") from None


def cmd_promote(args: argparse.Namespace) -> int:
    registry = _registry(args)
    _check_loads(registry, args.version)
    registry.promote(args.version, reason=args.reason or "promoted by hand")
    print(f"serving {args.version}: {SWITCH}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    version = _registry(args).rollback()
    print(f"serving {version} again: {SWITCH}")
    return 0


def cmd_shadow(args: argparse.Namespace) -> int:
    registry = _registry(args)
    if args.version == registry.served():
        raise SystemExit(f"{args.version} is the served version: shadow another one (`sluice model list`)")
    _check_loads(registry, args.version)
    registry.shadow(args.version)
    print(f"shadowing {args.version}: its decisions go to the shadow topic only")
    return 0


def cmd_unshadow(args: argparse.Namespace) -> int:
    registry = _registry(args)
    was = registry.candidate()
    registry.shadow(None)
    print(f"stopped shadowing {was}" if was else "no version was shadowed")
    return 0


@dataclass(frozen=True)
class ShadowReport:
    """The served model against its shadow on the events both decided."""

    served_versions: list[str]
    shadow_versions: list[str]
    events: int
    agreement: float  # share of events with the same decision
    changed: dict[str, int]  # "approve->review": count
    mean_abs_score_shift: float
    p99_abs_score_shift: float
    served_latency_p99_ms: float
    shadow_latency_p99_ms: float


def _by_event(settings: FraudSettings, topic: str, version: str | None = None) -> dict[str, dict[str, Any]]:
    """Each event's first decision on ``topic`` (by ``version`` only, when given): a replay or an
    at-least-once restart decides an event again later, and that is not how it was decided live."""
    out: dict[str, dict[str, Any]] = {}
    for m in read_all(settings.connection(), topic):
        body = orjson.loads(m.value() or b"{}")
        decided = isinstance(body, dict) and "event_id" in body and "decision" in body
        if decided and (version is None or body.get("model_version") == version):
            out.setdefault(str(body["event_id"]), body)
    return out


def shadow_report(settings: FraudSettings, version: str | None = None) -> ShadowReport:
    """Join decisions and the shadow decisions of one shadow ``version`` by event id and compare them.

    ``version`` defaults to the registry's current candidate, else the version of the newest shadow
    decision: the shadow topic keeps every earlier candidate's decisions too.
    """
    if version is None:
        version = ModelRegistry(settings.model_path).candidate()
    if version is None:
        last = read_all(settings.connection(), settings.shadow_topic)[-1:]
        version = str(orjson.loads(last[0].value() or b"{}").get("model_version")) if last else None
    shadow = _by_event(settings, settings.shadow_topic, version)
    served = _by_event(settings, settings.decisions_topic)
    both = [(served[e], s) for e, s in shadow.items() if e in served]
    if not both:
        raise SystemExit(
            f"no event has both a decision and a shadow decision of {version} (topic {settings.shadow_topic})"
        )
    changed: dict[str, int] = {}
    for a, b in both:
        if a["decision"] != b["decision"]:
            key = f"{a['decision']}->{b['decision']}"
            changed[key] = changed.get(key, 0) + 1
    shift = np.abs(np.array([b["score"] - a["score"] for a, b in both]))

    def p99_latency(bodies: list[dict[str, Any]]) -> float:
        lat = [b["decided_at"] - b["sent_at"] for b in bodies if b.get("sent_at")]
        return round(float(np.percentile(lat, 99)), 1) if lat else float("nan")

    return ShadowReport(
        served_versions=sorted({a["model_version"] for a, _ in both}),
        shadow_versions=sorted({b["model_version"] for _, b in both}),
        events=len(both),
        agreement=round(1 - sum(changed.values()) / len(both), 4),
        changed=dict(sorted(changed.items(), key=lambda kv: -kv[1])),
        mean_abs_score_shift=round(float(shift.mean()), 4),
        p99_abs_score_shift=round(float(np.percentile(shift, 99)), 4),
        served_latency_p99_ms=p99_latency([a for a, _ in both]),
        shadow_latency_p99_ms=p99_latency([b for _, b in both]),
    )


def cmd_shadow_report(args: argparse.Namespace) -> int:
    settings = FraudSettings.from_env()
    if args.path:
        settings = replace(settings, model_path=args.path)
    r = shadow_report(settings, args.version or None)
    print(f"served {', '.join(r.served_versions)} vs shadow {', '.join(r.shadow_versions)} on {r.events:,} events")
    print(f"same decision: {r.agreement:.2%}; changed: {r.changed or 'none'}")
    print(f"score shift |shadow - served|: mean {r.mean_abs_score_shift:.4f}, p99 {r.p99_abs_score_shift:.4f}")
    print(f"latency p99: served {r.served_latency_p99_ms} ms, shadow {r.shadow_latency_p99_ms} ms")
    return 0


def _utc(epoch_ms: int) -> str:
    """An event-time instant as people read it, with the number the options take.

    >>> _utc(1767225600000)
    '2026-01-01 00:00:00 UTC (1767225600000)'
    """
    at = datetime.fromtimestamp(epoch_ms / 1000.0, tz=UTC)
    return f"{at:%Y-%m-%d %H:%M:%S} UTC ({epoch_ms})"


def cmd_train_from_log(args: argparse.Namespace) -> int:
    """``sluice train fraud --from-log``: the feature log joined with chargebacks and verdicts, as of now."""
    from models.fraud_feature_log import LabelBook, join_labels, parse_feature_log
    from models.train_fraud import train_cascade

    settings = FraudSettings.from_env()
    if not settings.features_topic:
        raise SystemExit("SLUICE_FEATURES_TOPIC is empty: the flow logs no features to train from")
    conn = settings.connection()
    book = LabelBook()
    for m in read_all(conn, settings.labels_topic):
        book.add_chargeback(m.value())
    if args.verdicts_topic:
        for m in read_all(conn, args.verdicts_topic):
            book.add_verdict(m.value())
    logged = [parse_feature_log(m.value()) for m in read_all(conn, settings.features_topic)]
    as_of = int(args.as_of_ms or book.known_until() or time.time() * 1000)
    data = join_labels(logged, book, as_of_ms=as_of, maturity_ms=int(args.maturity_s * 1000))
    print(
        f"{len(logged):,} logged decisions, {len(data):,} with a known label as of {_utc(as_of)} "
        f"({int(data.labels.sum()):,} fraud); {int(data.has_sequence.sum()):,} with a sequence"
    )
    if len(data) < args.min_events or data.labels.sum() < 10:
        raise SystemExit(f"too little labelled data to train on (need {args.min_events} events and 10 frauds)")
    source = {
        "kind": "feature-log",
        "features_topic": settings.features_topic,
        "labels_topic": settings.labels_topic,
        "verdicts_topic": args.verdicts_topic,
        "as_of_ms": as_of,
        "maturity_s": args.maturity_s,
    }
    out = ModelRegistry(args.out or settings.model_path).root
    promote = args.promote or ModelRegistry(out).served() is None
    version, metrics = train_cascade(data, args.seed, out, source, promote=promote)
    print(f"trained {version} -> {out / version} ({'served' if promote else 'registered; not served'})")
    print(" ".join(f"{k}={v}" for k, v in metrics.items() if not isinstance(v, dict)))
    return 0


def add_arguments(model: argparse.ArgumentParser) -> None:
    """``sluice model ...``."""
    sub = model.add_subparsers(dest="model_command", required=True, metavar="{list,promote,rollback,shadow,...}")

    def command(name: str, help_text: str, fn: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--path", default="", help="the registry folder (default: $SLUICE_MODEL_PATH)")
        p.set_defaults(fn=fn)
        return p

    command("list", "versions, which is served and shadowed, their held-out metrics", cmd_list)
    p = command("promote", "serve VERSION (running flows switch at their next epoch end)", cmd_promote)
    p.add_argument("version")
    p.add_argument("--reason", default="")
    command("rollback", "serve the previously served version again", cmd_rollback)
    p = command("shadow", "score VERSION beside the served one, into the shadow topic", cmd_shadow)
    p.add_argument("version")
    command("unshadow", "stop shadowing", cmd_unshadow)
    p = command("shadow-report", "served vs shadow decisions on the same events", cmd_shadow_report)
    p.set_defaults(needs_broker=True)
    p.add_argument("--version", default="", help="the shadow version to report (default: the current candidate)")


def add_train_from_log_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--from-log`` options of ``sluice train fraud``."""
    p.add_argument("--from-log", action="store_true", help="train on the feature log joined with late labels")
    p.add_argument("--verdicts-topic", default="final-decisions", help="people's final decisions ('' for none)")
    p.add_argument("--maturity-s", type=float, default=600.0, help="an event without a chargeback this old is legit")
    p.add_argument(
        "--as-of-ms", type=int, default=0, help="labels known by this time only (default: the newest label's time)"
    )
    p.add_argument("--min-events", type=int, default=2000)
