"""Following one event through a flow: W3C ``traceparent`` in, a span per stage, the header copied out.

A producer that traces its requests puts a ``traceparent`` header (and maybe
``tracestate``) on the Kafka record. The flow then:

* copies both headers to every record it makes from that input (decisions,
  responses, dead letters: :func:`trace_headers`), whether or not it records
  spans itself, so whoever consumes the output continues the same trace;
* with tracing on (``SLUICE_TRACING=1``), records one span per stage the event
  went through (parse, window, lookup, model, search, generation, sink), as
  children of the producer's span. A stage works on batches, so an event's span
  is the call that processed its batch: the time the event spent in that stage.

The spans are built from the input's header wherever the event is, so an event
whose stages run in different processes still gets one trace. Only events that
carry the header cost anything; tracing is off by default and sampled
(``SLUICE_TRACE_SAMPLE``: a share of the trace ids the producer sampled, the
same decision in every process). Exporters: ``console``, ``otlp`` (when
``opentelemetry-exporter-otlp`` is installed; the endpoint comes from the usual
``OTEL_EXPORTER_OTLP_*`` variables), ``jsonl:PATH`` (one JSON object per span
per line) and ``memory`` (tests in the same process).
"""

from __future__ import annotations

import atexit
import json
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from operators.kafka.records import AnyHeaders, Headers, SourceRecord, header_value

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
EXPORTERS = ("console", "otlp", "memory", "jsonl:PATH")


class TracingError(ValueError):
    """The tracing settings cannot be used (one line naming the setting)."""


class JsonLinesExporter(SpanExporter):
    """Appends one JSON object per finished span to a file: easy to read back in tests and scripts."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:  # at start, not at the first export: a path that cannot be written is a setting to fix
            self.path.open("a").close()
        except OSError as exc:
            raise TracingError(f"SLUICE_TRACE_EXPORTER=jsonl:{path}: cannot write there ({exc.strerror})") from None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for s in spans:
            ctx, parent = s.get_span_context(), s.parent
            lines.append(
                json.dumps(
                    {
                        "name": s.name,
                        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
                        "span_id": f"{ctx.span_id:016x}" if ctx else None,
                        "parent_id": f"{parent.span_id:016x}" if parent else None,
                        "start_ns": s.start_time,
                        "end_ns": s.end_time,
                        "attributes": dict(s.attributes or {}),
                    }
                )
            )
        with self._lock, self.path.open("a") as f:
            f.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class _State:
    tracer: trace.Tracer | None = None
    provider: TracerProvider | None = None
    memory: InMemorySpanExporter | None = None
    flow: str = "sluice"


_STATE = _State()
_PROPAGATOR = TraceContextTextMapPropagator()


def _exporter(spec: str) -> tuple[SpanExporter, bool]:
    """The exporter ``spec`` names, and whether it wants a batching processor."""
    if spec == "console":
        return ConsoleSpanExporter(), True
    if spec == "memory":
        _STATE.memory = InMemorySpanExporter()
        return _STATE.memory, False
    if spec.startswith("jsonl:") and len(spec) > len("jsonl:"):
        return JsonLinesExporter(spec[len("jsonl:") :]), True
    if spec == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TracingError(
                "SLUICE_TRACE_EXPORTER=otlp needs `pip install opentelemetry-exporter-otlp-proto-http`"
            ) from None
        return OTLPSpanExporter(), True
    raise TracingError(f"SLUICE_TRACE_EXPORTER={spec!r} is not an exporter: use one of {', '.join(EXPORTERS)}")


def configure(flow: str, exporter: str = "console", sample: float = 1.0) -> None:
    """Turn span recording on for this process: ``flow`` names the spans, ``sample`` is the share of the
    producer-sampled traces recorded. Finished spans are flushed at exit."""
    if not 0.0 <= sample <= 1.0:
        raise TracingError(f"SLUICE_TRACE_SAMPLE={sample!r} must be between 0 and 1")
    shutdown()
    span_exporter, batched = _exporter(exporter)
    sampler = ParentBased(
        root=ALWAYS_OFF,  # an input without a traceparent starts no trace: only producers decide what is traced
        remote_parent_sampled=TraceIdRatioBased(sample),
        remote_parent_not_sampled=ALWAYS_OFF,
    )
    provider = TracerProvider(sampler=sampler, resource=Resource.create({"service.name": f"sluice-{flow}"}))
    processor = (
        BatchSpanProcessor(span_exporter, schedule_delay_millis=500) if batched else SimpleSpanProcessor(span_exporter)
    )
    provider.add_span_processor(processor)
    _STATE.provider, _STATE.tracer, _STATE.flow = provider, provider.get_tracer("sluice"), flow
    atexit.unregister(shutdown)  # once, however often tracing is configured
    atexit.register(shutdown)


def shutdown() -> None:
    """Flush and stop span recording (tracing is off afterwards)."""
    provider, _STATE.provider, _STATE.tracer = _STATE.provider, None, None
    if provider is not None:
        provider.shutdown()


def enabled() -> bool:
    return _STATE.tracer is not None


def memory_exporter() -> InMemorySpanExporter:
    """The exporter of ``configure(..., exporter="memory")`` (tests)."""
    if _STATE.memory is None:
        raise RuntimeError("tracing is not configured with the memory exporter")
    return _STATE.memory


def trace_headers(source: SourceRecord | None) -> Headers:
    """The ``traceparent`` / ``tracestate`` headers of the input ``source``, to copy onto an output made from it.

    >>> trace_headers(SourceRecord("t", 0, 1, None, b"{}", 0, [("traceparent", b"00-ab-cd-01")]))
    [('traceparent', b'00-ab-cd-01')]
    >>> trace_headers(SourceRecord("t", 0, 1, None, b"{}"))
    []
    """
    if source is None or not source.headers:
        return []
    return header_pairs(source.headers)


def header_pairs(headers: AnyHeaders) -> Headers:
    """The trace headers among ``headers`` (as ``(name, bytes)`` pairs, ready for a :class:`KafkaRecord`).

    >>> header_pairs([("tracestate", "a=1"), ("x", b""), ("traceparent", b"00-ab-cd-01")])
    [('traceparent', b'00-ab-cd-01'), ('tracestate', b'a=1')]
    >>> header_pairs([("tracestate", b"a=1")]), header_pairs({"traceparent": b"p"})
    ([], [('traceparent', b'p')])
    >>> header_pairs([("traceparent", None), ("traceparent", b"p")])  # the first one counts, as header_value
    []
    """
    out: Headers = []
    parent = header_value(headers, TRACEPARENT)
    if parent is not None:
        out.append((TRACEPARENT, parent))
        state = header_value(headers, TRACESTATE)
        if state is not None:
            out.append((TRACESTATE, state))
    return out


def record_spans(
    stage: str, parents: Iterable[bytes], start_ns: int, end_ns: int, attributes: dict[str, Any] | None = None
) -> None:
    """One span ``<flow>.<stage>`` from ``start_ns`` to ``end_ns`` (epoch ns) under each ``traceparent`` value."""
    tracer = _STATE.tracer
    if tracer is None:
        return
    name = f"{_STATE.flow}.{stage}"
    for parent in parents:
        context = _PROPAGATOR.extract({TRACEPARENT: parent.decode("ascii", "replace")})
        span = tracer.start_span(name, context=context, start_time=start_ns, attributes=attributes)
        span.end(end_time=end_ns)


def traced_parents(headers_list: Iterable[AnyHeaders]) -> list[bytes]:
    """The ``traceparent`` values among many records' headers (records without one cost a truth test)."""
    out = []
    for headers in headers_list:
        if headers:
            parent = header_value(headers, TRACEPARENT)
            if parent is not None:
                out.append(parent)
    return out
