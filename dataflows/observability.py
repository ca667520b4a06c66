"""Observability of a flow process: the metrics server, tracing, and the alarm steps a flow adds.

Every flow gets, without code of its own (:func:`dataflows.runtime.flow_from_env`
calls :func:`start`): ``/metrics`` on ``SLUICE_METRICS_PORT`` + the process index
(each process of a multi-process flow needs its own port), the stage metrics of
the generic operators it uses, and spans when ``SLUICE_TRACING=1``. A flow adds
its alarms with one call, :func:`alarm_records`, merged into its Kafka output:

    alarms = alarm_records(settings, records, slo_stage="stage1", drift=samples, references=references)
    kafka_output("out", op.merge("all_out", decisions, dead, alarms), ...)

Metrics are off by default (port 0): a fixed default port would make the second
flow started on a machine (tests, replays, a benchmark next to a demo) fail to
start, and "off" is also the baseline the overhead figure is measured against.
Alarms need the metrics (the health rules read them), so they are off with them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream

from dataflows.command_line import BytewaxCommandLine
from models.artifacts import resolve
from operators import metrics, tracing
from operators.alarms import (
    Alarm,
    DriftSettings,
    HealthRules,
    References,
    ScoreSample,
    drift_alarms,
    health_alarms,
    health_snapshots,
)
from operators.kafka.records import KafkaRecord
from sluice.settings import FlowSettings, SettingsError
from state.drift import ModelReference, reference_file


class MetricsPortBusy(SettingsError):
    """The metrics port is taken (another flow process, or another program)."""


def metrics_port_offset(index: int, env: Mapping[str, str] | None = None) -> int:
    """How far above ``SLUICE_METRICS_PORT`` this process serves: its index where the processes of a
    cluster share one host (``-i/-a`` on one machine), 0 in a Kubernetes pod, which has an address of its
    own, so that one scrape annotation on the StatefulSet's template fits every pod.

    >>> metrics_port_offset(2, {}), metrics_port_offset(2, {"KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    (2, 0)
    """
    env = os.environ if env is None else env
    return 0 if env.get("KUBERNETES_SERVICE_HOST") else index


def start(settings: FlowSettings, flow_name: str) -> None:
    """Metrics on (and served) when ``metrics_port`` is set, tracing on when ``tracing`` is; raises
    :class:`SettingsError` naming the setting when either cannot start."""
    index = BytewaxCommandLine.of_this_process(os.environ).process_index
    metrics.configure(flow_name, enabled=settings.metrics_port > 0, process=index)
    if settings.metrics_port:
        port = settings.metrics_port + metrics_port_offset(index)
        try:
            metrics.serve(port, settings.metrics_addr)
        except OSError as exc:
            raise MetricsPortBusy(
                f"SLUICE_METRICS_PORT={settings.metrics_port}: cannot serve metrics on "
                f"{settings.metrics_addr}:{port} (process {index}; SLUICE_METRICS_ADDR={settings.metrics_addr}): "
                f"{exc.strerror or exc}"
            ) from None
        metrics.FLOW_INFO.set((str(index),), 1.0)
    if settings.tracing:
        try:
            tracing.configure(flow_name, settings.trace_exporter, settings.trace_sample)
        except tracing.TracingError as exc:
            raise SettingsError(str(exc)) from None


def health_rules(settings: FlowSettings) -> HealthRules:
    return HealthRules(
        lag_growing_s=settings.alarm_lag_s,
        dlq_rate=settings.alarm_dlq_rate,
        fallback_rate=settings.alarm_fallback_rate,
        slo_burn=settings.alarm_slo_burn,
        window_s=settings.alarm_window_s,
    )


def drift_settings(settings: FlowSettings) -> DriftSettings:
    return DriftSettings(
        settings.drift_psi,
        timedelta(seconds=settings.drift_window_s),
        settings.drift_min_count,
        settings.drift_warmup_windows,
    )


def alarm_records(
    settings: FlowSettings,
    carrier: Stream[Any],
    *,
    slo_stage: str | None = None,
    drift: Stream[ScoreSample] | None = None,
    references: References | None = None,
) -> Stream[KafkaRecord]:
    """The flow's alarm records for ``settings.alarms_topic``: health alarms from snapshots taken as batches
    of ``carrier`` (the main input records) pass, SLO burn at ``slo_stage``, and, given ``drift`` samples
    and their ``references``, drift alarms. Merge the result into the flow's Kafka output."""
    snapshots = health_snapshots("health_snapshots", carrier, slo_stage, settings.slo_ms)
    alarms: Stream[Alarm] = health_alarms("health", snapshots, health_rules(settings))
    if drift is not None:
        if references is None:
            raise ValueError("drift samples need their references")
        alarms = op.merge("alarms", alarms, drift_alarms("drift", drift, references, drift_settings(settings)))
    return op.map("alarm_records", alarms, functools.partial(_alarm_record, settings.alarms_topic))


def _alarm_record(topic: str, alarm: Alarm) -> KafkaRecord:
    return alarm.to_record(topic)


def artifact_references(root: str | Path) -> References:
    """References saved with model artifacts: ``<root>/<version>/drift_reference.<model>.json`` or else
    ``<root>/<version>/drift_reference.json`` (``None`` where a version has neither); each is read once."""

    @functools.cache
    def load(model: str, version: str) -> ModelReference | None:
        folder = resolve(root) / version
        for name in (reference_file(model), reference_file()):
            if (folder / name).exists():
                return ModelReference.load(folder / name)
        return None

    return load
