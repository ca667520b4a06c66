"""Prometheus metrics of a flow process: one registry, every metric defined here, nearly free on the hot path.

Why not ``prometheus_client.Counter``/``Histogram`` directly: each ``inc`` takes a
lock (0.3 us) and each ``observe`` about 0.8 us, and a histogram cannot take a
whole batch of values at once. The fraud flow spends ~45 us of CPU per event, so
the operators record per *batch*, into plain per-thread structures that only the
worker thread writing them touches (no lock, no lost update between Bytewax
worker threads), and one collector sums the threads when ``/metrics`` is scraped:

* :class:`Counter`: one-element lists per thread and label set (``cell[0] += n``, ~30 ns).
* :class:`Histogram`: bucket counts per thread; :meth:`Histogram.observe_many`
  bins a numpy array of values in one call (a batch's event ages).
* :class:`Gauge`: one process-wide value per label set (last write wins).
* :class:`Watched` and :class:`CallbackFamily`: live objects (asynchronous
  batchers, feature stores) read at scrape time, so their hot paths only bump
  their own ints.

Label conventions: every metric carries ``flow`` (the dataflow's name, set once
per process by :func:`configure`); the others are ``stage`` (the step id that
recorded it), ``topic``, ``partition``, ``model``, ``version``, ``device``,
``reason``, ``outcome``, ``alarm``, ``subject``. Times are in milliseconds
(``MS_BUCKETS``: 0.1 ms to 60 s, with the seed SLO targets as bucket edges, so
"share over the target" is exact), sizes in items (``SIZE_BUCKETS``).

Recording is off until :func:`configure` turns it on (``SLUICE_METRICS_PORT``
set): the operators then skip it entirely, which is the baseline the overhead
figure is measured against.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import logging
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from operators.gc_pacing import PACER
from state.feature_store import FeatureStore


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per scrape (a slow client cannot hold up the next), daemon threads."""

    daemon_threads = True


# 35, 80 and 110 ms: the fraud, personalization and assistant latency targets (exact "share over the target")
MS_BUCKETS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 35, 50, 80, 100, 110, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000,
)  # fmt: skip
SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

Key = tuple[str, ...]
log = logging.getLogger(__name__)


@dataclass
class _Process:
    flow: str = "sluice"
    process: int = 0
    on: bool = False


PROCESS = _Process()
REGISTRY = CollectorRegistry(auto_describe=False)
FAMILIES: dict[str, Family] = {}  # the catalogue: every metric name this code can export


def configure(flow: str, *, enabled: bool = True, process: int = 0) -> None:
    """Name this process's flow (the ``flow`` label) and turn recording on or off."""
    PROCESS.flow, PROCESS.process, PROCESS.on = flow, process, enabled


class Family:
    """A metric's name, help text and labels (``flow`` first, added on export)."""

    kind = "untyped"

    def __init__(self, name: str, doc: str, labels: Sequence[str] = (), *, catalogue: bool = True) -> None:
        self.name, self.doc, self.labels = name, doc, tuple(labels)
        if catalogue:  # exported by the process collector (examples and tests keep theirs out)
            if name in FAMILIES:
                raise ValueError(f"metric {name} is defined twice")
            FAMILIES[name] = self

    def render(self, out: list[str]) -> None:
        """Append this family's lines in the Prometheus text format to ``out``."""
        raise NotImplementedError

    def _header(self, kind: str, out: list[str], name: str | None = None) -> None:
        name = name or self.name
        doc = self.doc.replace("\\", "\\\\").replace("\n", "\\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")

    def _label_set(self, key: Key) -> str:
        """``flow="..",stage=".."`` for a key's label values (escaped as the text format requires)."""
        return ",".join(
            f'{n}="{_escape(v)}"' for n, v in zip(("flow", *self.labels), (PROCESS.flow, *key), strict=True)
        )

    def _scalars(self, kind: str, samples: Iterable[tuple[Key, float]], out: list[str]) -> None:
        """A counter or gauge family of ``samples`` (label values without ``flow``, value)."""
        name = self.name if kind != "counter" or self.name.endswith("_total") else f"{self.name}_total"
        self._header(kind, out, name)
        for key, value in sorted(samples):
            out.append(f"{name}{{{self._label_set(key)}}} {floatToGoString(value)}\n")


class _PerThread:
    """One private value per writing thread, all of them readable by the collector."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def local(self) -> Any:
        try:
            return self._local.value
        except AttributeError:
            value = self._local.value = self._make()
            with self._lock:
                self._all.append(value)
            return value

    def every(self) -> list[Any]:
        with self._lock:
            return list(self._all)


class Counter(Family):
    """A monotonic count per label set, kept in one-element lists ("cells") per writing thread.

    Code that adds often with the same labels (a logic object running once per key)
    keeps ``cell = C.cell(key)`` and does ``cell[0] += n`` (~30 ns): the cell belongs
    to the thread that asked for it, and the collector sums every thread's cells.

    >>> c = Counter("example_total", "an example", ["stage"], catalogue=False)
    >>> c.add(("parse",), 3); cell = c.cell(("parse",)); cell[0] += 2
    >>> c.value(("parse",))
    5
    """

    kind = "counter"

    def __init__(self, name: str, doc: str, labels: Sequence[str] = (), *, catalogue: bool = True) -> None:
        super().__init__(name, doc, labels, catalogue=catalogue)
        self._threads = _PerThread(dict)

    def cell(self, key: Key) -> list[int]:
        """This thread's cell for ``key`` (add to ``cell[0]`` from this thread only)."""
        cells: dict[Key, list[int]] = self._threads.local()
        found = cells.get(key)
        if found is None:
            found = cells[key] = [0]
        return found

    def add(self, key: Key, n: int = 1) -> None:
        self.cell(key)[0] += n

    def values(self) -> dict[Key, int]:
        """Totals over every thread, by label set."""
        out: dict[Key, int] = {}
        for cells in self._threads.every():
            for key, found in cells.copy().items():
                out[key] = out.get(key, 0) + found[0]
        return out

    def value(self, key: Key) -> int:
        return self.values().get(key, 0)

    def render(self, out: list[str]) -> None:
        self._scalars("counter", self.values().items(), out)


class _Buckets:
    __slots__ = ("counts", "total")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.total = 0.0


@dataclass(frozen=True)
class HistogramValue:
    """A histogram's state: cumulative counts per upper bound (``+Inf`` last), the sum and the count."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    total: float

    @property
    def count(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0

    def share_above(self, bound: float) -> float:
        """The share of observations above ``bound``, 0 when there are none. Between two bucket edges the
        bucket's observations are taken as spread evenly (as ``quantile`` does): an SLO of 40 ms is not read
        as 35 ms. Above the last finite edge nothing is known, so all of the ``+Inf`` bucket counts as above.

        >>> h = HistogramValue((1.0, 2.0, float("inf")), (5, 9, 10), 12.0)
        >>> [round(h.share_above(b), 9) for b in (1.0, 1.5, 0.5, 7.0)]
        [0.5, 0.3, 0.75, 0.1]
        """
        if not self.count:
            return 0.0
        i = bisect.bisect_left(self.bounds, bound)
        if i < len(self.bounds) and self.bounds[i] == bound:
            below = float(self.cumulative[i])
        elif i == len(self.bounds) or math.isinf(self.bounds[i]):  # above the last finite edge
            below = float(self.cumulative[i - 1]) if i else 0.0
        else:
            lower, before = (self.bounds[i - 1], self.cumulative[i - 1]) if i else (0.0, 0)
            below = before + (self.cumulative[i] - before) * (bound - lower) / (self.bounds[i] - lower)
        return 1.0 - below / self.count

    def quantile(self, q: float) -> float:
        """Linear interpolation inside the bucket, as PromQL's ``histogram_quantile`` does."""
        return histogram_quantile(q, list(zip(self.bounds, self.cumulative, strict=True)))


class Histogram(Family):
    """Observations in fixed buckets per label set, kept per writing thread.

    >>> h = Histogram("example_ms", "an example", ["stage"], buckets=(1, 10, 100), catalogue=False)
    >>> h.observe(("s",), 5.0)
    >>> h.observe_many(("s",), np.array([0.5, 50.0, 500.0]))
    >>> v = h.value(("s",))
    >>> v.cumulative, v.total
    ((1, 2, 3, 4), 555.5)
    """

    kind = "histogram"

    def __init__(
        self,
        name: str,
        doc: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = MS_BUCKETS,
        *,
        catalogue: bool = True,
    ) -> None:
        super().__init__(name, doc, labels, catalogue=catalogue)
        self.bounds = tuple(float(b) for b in buckets)
        self._edges = np.asarray(self.bounds)
        self._le = [floatToGoString(b) for b in (*self.bounds, float("inf"))]  # the text format's bucket labels
        self._threads = _PerThread(dict)

    def _buckets(self, key: Key) -> _Buckets:
        mine: dict[Key, _Buckets] = self._threads.local()
        b = mine.get(key)
        if b is None:
            b = mine[key] = _Buckets(len(self.bounds) + 1)
        return b

    def observe(self, key: Key, value: float) -> None:
        b = self._buckets(key)
        b.counts[bisect.bisect_left(self.bounds, value)] += 1
        b.total += value

    def observe_many(self, key: Key, values: np.ndarray, weight: int = 1) -> None:
        """Observe every value of ``values`` (``weight`` times each: a strided sample of a larger batch)."""
        if not len(values):
            return
        b = self._buckets(key)
        binned = np.bincount(np.searchsorted(self._edges, values, side="left"), minlength=len(b.counts))
        counts = b.counts
        for i, n in enumerate(binned.tolist()):
            if n:
                counts[i] += n * weight
        b.total += float(values.sum()) * weight

    def values(self) -> dict[Key, HistogramValue]:
        merged: dict[Key, tuple[list[int], float]] = {}
        for mine in self._threads.every():
            for key, b in mine.copy().items():
                counts, total = merged.setdefault(key, ([0] * (len(self.bounds) + 1), 0.0))
                for i, n in enumerate(list(b.counts)):
                    counts[i] += n
                merged[key] = (counts, total + b.total)
        bounds = (*self.bounds, float("inf"))
        return {
            key: HistogramValue(bounds, tuple(np.cumsum(counts).tolist()), total)
            for key, (counts, total) in merged.items()
        }

    def value(self, key: Key) -> HistogramValue:
        empty = HistogramValue((*self.bounds, float("inf")), (0,) * (len(self.bounds) + 1), 0.0)
        return self.values().get(key, empty)

    def render(self, out: list[str]) -> None:
        self._header("histogram", out)
        name, edges = self.name, self._le
        for key, v in sorted(self.values().items()):
            labels = self._label_set(key)
            out.extend(f'{name}_bucket{{{labels},le="{le}"}} {c}\n' for le, c in zip(edges, v.cumulative, strict=True))
            out.append(f"{name}_count{{{labels}}} {v.count}\n{name}_sum{{{labels}}} {floatToGoString(v.total)}\n")


class Gauge(Family):
    """The latest value per label set, process-wide (sizes, lags, states)."""

    kind = "gauge"

    def __init__(self, name: str, doc: str, labels: Sequence[str] = (), *, catalogue: bool = True) -> None:
        super().__init__(name, doc, labels, catalogue=catalogue)
        self._values: dict[Key, float] = {}

    def set(self, key: Key, value: float) -> None:
        self._values[key] = value

    def values(self) -> dict[Key, float]:
        return self._values.copy()

    def value(self, key: Key) -> float | None:
        return self._values.get(key)

    def render(self, out: list[str]) -> None:
        self._scalars("gauge", self.values().items(), out)


class CallbackFamily(Family):
    """A metric whose samples a function reads from live objects at scrape time (their hot paths stay plain ints)."""

    def __init__(
        self, name: str, doc: str, labels: Sequence[str], kind: str, read: Callable[[], Iterable[tuple[Key, float]]]
    ) -> None:
        super().__init__(name, doc, labels)
        self.kind, self._read = kind, read

    def render(self, out: list[str]) -> None:
        self._scalars(self.kind, self._read(), out)


class Watched(Family):
    """Values read from live objects at scrape time, summed per label set; an object stops counting once
    it is garbage (its hot path only keeps its own attributes up to date).

    >>> class Queue:
    ...     depth = 3
    >>> w = Watched("example_depth", "an example", ["stage"], catalogue=False)
    >>> q = Queue(); w.watch(q, lambda obj: [(("gen",), obj.depth)])
    >>> w.values()
    {('gen',): 3.0}
    """

    def __init__(
        self, name: str, doc: str, labels: Sequence[str] = (), kind: str = "gauge", *, catalogue: bool = True
    ) -> None:
        super().__init__(name, doc, labels, catalogue=catalogue)
        self.kind = kind
        self._objects: weakref.WeakKeyDictionary[Any, Callable[[Any], Iterable[tuple[Key, float]]]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def watch(self, obj: Any, read: Callable[[Any], Iterable[tuple[Key, float]]]) -> None:
        with self._lock:
            self._objects[obj] = read

    def values(self) -> dict[Key, float]:
        with self._lock:
            watched = list(self._objects.items())
        out: dict[Key, float] = {}
        for obj, read in watched:
            for key, value in read(obj):
                out[key] = out.get(key, 0.0) + float(value)
        return out

    def render(self, out: list[str]) -> None:
        self._scalars(self.kind, self.values().items(), out)


def _escape(value: str) -> str:
    """A label value as the text format writes it.

    >>> _escape('a"b\\\\c')
    'a\\\\"b\\\\\\\\c'
    """
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, resident memory: what `sluice top` shows as CPU


def exposition() -> bytes:
    """The text format of every metric (what ``/metrics`` serves).

    Rendered here rather than through ``prometheus_client``'s metric objects: that
    path made ~40,000 Python calls for the fraud flow's ~800 lines (5 ms warm,
    15-20 ms in a busy flow process) against one f-string per line here.
    """
    out: list[str] = []
    for fam in list(FAMILIES.values()):
        fam.render(out)
    return "".join(out).encode() + bytes(generate_latest(REGISTRY))


class ScrapeHandoff:
    """A scrape's rendering, done by a flow thread that holds the GIL anyway instead of the server thread.

    Measured (2026-11-30, a busy pure-Python main thread, ``/metrics`` scraped every
    second): rendering on the server thread took 5 ms of CPU but 50-70 ms of wall
    time, and cost the main thread 3-4% of its throughput: the two threads trade
    the GIL every switch interval (5 ms) for the whole render. So the server thread
    only asks (:meth:`body`) and waits without the GIL; a flow thread renders at
    its next :meth:`render_if_asked` (the Kafka source calls it on every poll: one
    attribute read while nobody asks) and the render costs its 5 ms once. When no
    flow thread comes by within ``wait_s`` (an idle or stuck flow), the server
    thread renders itself, so a scrape always answers.

    A render that fails never reaches the flow thread: the error is logged and
    handed to the waiting scrape, which answers 500. A flow thread never waits
    for a render another thread is doing (it skips and goes on).
    """

    def __init__(self, render: Callable[[], bytes] = exposition, wait_s: float = 0.25) -> None:
        self.asked = False
        self._render = render
        self._wait_s = wait_s
        self._body = b""
        self._error: Exception | None = None
        self._rendered = threading.Event()
        self._rendering = threading.Lock()
        self._one_scrape = threading.Lock()

    def render_if_asked(self) -> None:
        """Render now if a scrape is waiting (call from flow threads, as often as convenient)."""
        if self.asked and self._rendering.acquire(blocking=False):
            try:
                self._render_locked()
            finally:
                self._rendering.release()

    def _render_locked(self) -> None:
        if not self.asked:
            return
        try:
            self._body, self._error = self._render(), None
        except Exception as exc:  # noqa: BLE001 - a metrics bug must not stop the flow that happened to render
            log.exception("rendering /metrics failed")
            self._error = exc
        self.asked = False
        self._rendered.set()

    def body(self) -> bytes:
        """The current exposition (call from the server thread: blocks up to ``wait_s`` for a flow thread).

        >>> handoff = ScrapeHandoff(lambda: b"up 1\\n", wait_s=0.01)
        >>> handoff.body()   # nobody came by: the server thread rendered it
        b'up 1\\n'

        Raises what the render raised (the server answers 500).
        """
        with self._one_scrape:
            self._rendered.clear()
            self.asked = True
            if not self._rendered.wait(self._wait_s):
                with self._rendering:  # no flow thread came by (or one is rendering: then this waits for it)
                    self._render_locked()
            if self._error is not None:
                raise RuntimeError(f"rendering /metrics failed: {self._error}") from self._error
            return self._body


SCRAPES = ScrapeHandoff()


TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"  # what exposition() writes


def _metrics_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics\n"]
    try:
        body = SCRAPES.body()
    except RuntimeError as exc:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [f"{exc}\n".encode()]
    start_response("200 OK", [("Content-Type", TEXT_FORMAT), ("Content-Length", str(len(body)))])
    return [body]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return  # a scrape a second is not news


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread (rendered via :data:`SCRAPES`); raises
    ``OSError`` if the port is taken."""
    server = make_server(addr, port, _metrics_app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="sluice-metrics", daemon=True).start()


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """The ``q`` quantile of cumulative ``(upper bound, count)`` buckets, as PromQL computes it (NaN when empty).

    >>> histogram_quantile(0.5, [(1.0, 0), (2.0, 10), (float("inf"), 10)])
    1.5
    >>> histogram_quantile(0.99, [(1.0, 10), (float("inf"), 20)])   # in +Inf: the highest finite bound
    1.0
    """
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    total = buckets[-1][1]
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


_REASON_NOISE = re.compile(r"'[^']*'|\"[^\"]*\"|\[[^\]]*\]|\([^)]*\)|\d+(\.\d+)?(e[+-]?\d+)?")
MAX_REASONS = 40  # distinct reason labels per process; more become "other" (a label must stay bounded)
_reasons: dict[str, str] = {}


def reason_class(reason: str) -> str:
    """A bounded label for a dead letter's free-text reason: the text before the first colon, without
    quoted values, numbers and bracketed parts (the full reason stays in the record's ``dlq.reason``).

    >>> reason_class("field 'amount' out of range [0.01, 1e+06]")
    'field out of range'
    >>> reason_class("not valid JSON: unexpected character: line 1 column 2 (char 1)")
    'not valid JSON'
    >>> reason_class("duplicate event id 'v-ok-card': this card already has a decision for it")
    'duplicate event id'
    """
    label = _reasons.get(reason)
    if label is None:
        head = reason.split(":", 1)[0]
        label = " ".join(_REASON_NOISE.sub(" ", head).split())[:60] or "unknown"
        if label not in _reasons.values() and len(set(_reasons.values())) >= MAX_REASONS:
            label = "other"
        if len(_reasons) < 10_000:
            _reasons[reason] = label
    return label


# --- the catalogue ---------------------------------------------------------------------------------------------------

FLOW_INFO = Gauge("sluice_flow_info", "1 for each running flow process", ["process"])

SOURCE_RECORDS = Counter("sluice_source_records_total", "records read from Kafka", ["topic", "partition"])
SOURCE_LAG_RECORDS = Gauge(
    "sluice_source_lag_records", "records in the partition not read yet (high watermark - next offset)",
    ["topic", "partition"],
)  # fmt: skip
SOURCE_LAG_SECONDS = Gauge(
    "sluice_source_lag_seconds", "age of the last record read while behind (0 when caught up)", ["topic", "partition"]
)

STAGE_ORDER = Gauge(
    "sluice_stage_order", "the order stages were built in (upstream first): how views list them", ["stage"]
)
STAGE_ITEMS = Counter("sluice_stage_items_total", "items a stage processed", ["stage"])
STAGE_DURATION = Histogram("sluice_stage_duration_ms", "time spent in one call of a stage (a batch)", ["stage"])
STAGE_AGE = Histogram(
    "sluice_stage_age_ms", "age of events as they leave a stage: now - their input record's Kafka timestamp", ["stage"]
)
WINDOW_EVENTS = Counter(
    "sluice_window_events_total", "events that did not simply join their window", ["stage", "status"]
)

BATCH_SIZE = Histogram("sluice_batch_size", "items per micro-batch call", ["stage"], SIZE_BUCKETS)
BATCH_WAIT = Histogram("sluice_batch_wait_ms", "how long a micro-batch's oldest item waited for it", ["stage"])

MODEL_INFERENCE = Histogram(
    "sluice_model_inference_ms", "one model call (a batch)", ["model", "version", "device"]
)  # fmt: skip
MODEL_ROWS = Counter("sluice_model_rows_total", "rows scored or encoded", ["model", "version", "device"])

LOOKUP_DURATION = Histogram("sluice_lookup_duration_ms", "one batched lookup (cache + Redis round trip)", ["stage"])


def _stores(
    read: Callable[[FeatureStore[object]], Iterable[tuple[Key, float]]],
) -> Callable[[], list[tuple[Key, float]]]:
    def every() -> list[tuple[Key, float]]:
        totals: dict[Key, float] = {}
        for store in FeatureStore.live():
            for key, value in read(store):
                totals[key] = totals.get(key, 0.0) + value
        return list(totals.items())

    return every


STORE_LOOKUPS = CallbackFamily(
    "sluice_feature_store_lookups_total",
    "keys looked up: hit (cache), miss (read from Redis), down (answered 'store down': the caller's fallback)",
    ["namespace", "result"],
    "counter",
    _stores(
        lambda s: [((s.namespace, "hit"), s.hits), ((s.namespace, "miss"), s.misses), ((s.namespace, "down"), s.down)]
    ),
)
STORE_ROUND_TRIPS = CallbackFamily(
    "sluice_feature_store_round_trips_total", "Redis round trips of batched reads", ["namespace"], "counter",
    _stores(lambda s: [((s.namespace,), s.round_trips)]),
)  # fmt: skip
STORE_FAILURES = CallbackFamily(
    "sluice_feature_store_failures_total", "failed Redis round trips", ["namespace"], "counter",
    _stores(lambda s: [((s.namespace,), s.failures)]),
)  # fmt: skip
STORE_CIRCUIT = CallbackFamily(
    "sluice_feature_store_circuit_open", "1 while the circuit breaker answers 'store down' without trying",
    ["namespace"], "gauge", _stores(lambda s: [((s.namespace,), float(s.circuit_open))]),
)  # fmt: skip

GC_COLLECTIONS = CallbackFamily(
    "sluice_gc_collections_total", "paced garbage collections (operators/gc_pacing.py)", ["kind"], "counter",
    lambda: [(("young",), float(PACER.young)), (("full",), float(PACER.full))],
)  # fmt: skip
GC_PAUSE = CallbackFamily(
    "sluice_gc_pause_ms_total", "time the paced garbage collections held the flow thread", ["kind"], "counter",
    lambda: [(("young",), PACER.young_ms), (("full",), PACER.full_ms)],
)  # fmt: skip

DEAD_LETTERS = Counter("sluice_dead_letters_total", "records sent to a dead-letter topic", ["step", "reason"])
DECISIONS = Counter("sluice_decisions_total", "decisions made", ["outcome"])

SINK_RECORDS = Counter("sluice_sink_records_total", "records handed to Kafka", ["topic"])
SINK_FLUSH = Histogram("sluice_sink_flush_ms", "at-least-once: the flush before a checkpoint may commit")
COMMIT_DURATION = Histogram("sluice_commit_ms", "exactly-once: committing one epoch's transaction")
TRANSACTIONS = Counter("sluice_transactions_total", "exactly-once transactions by result", ["result"])
REPLAY_SKIPPED = Counter("sluice_exactly_once_skipped_total", "replayed records already committed, not written again")

INDEX_SIZE = Gauge("sluice_index_size", "what a live index holds", ["index", "unit"])
INDEX_BACKLOG = Gauge("sluice_index_backlog", "document events waiting to be indexed", ["index"])
INDEX_FRESHNESS = Gauge(
    "sluice_index_freshness_seconds",
    "how far an index is behind its input: the oldest document event not indexed yet (live index, 0: up to date), "
    "or the producer-to-searchable delay of the last update (replicas)",
    ["index"],
)

ASYNC_QUEUE = Watched(
    "sluice_async_queue_depth", "items waiting in an asynchronous batcher, the batch in flight included", ["stage"]
)
LLM_TOKENS = Counter("sluice_llm_tokens_total", "tokens generated", ["model"])
LLM_TOKENS_PER_S = Gauge("sluice_llm_tokens_per_second", "tokens per second of the last generation batch", ["model"])

DRIFT_PSI = Gauge(
    "sluice_drift_psi", "population stability index of the last closed window", ["model", "version", "feature"]
)
ALARM_ACTIVE = Gauge("sluice_alarm_active", "1 while an alarm is firing", ["alarm", "subject"])
ALARMS_FIRED = Counter("sluice_alarms_total", "alarms fired", ["alarm"])


def record_outcomes(outcomes: Iterable[str]) -> None:
    """Count a batch's decisions by outcome (call once per batch with every outcome)."""
    if not PROCESS.on:
        return
    for outcome, n in collections.Counter(outcomes).items():
        DECISIONS.add((outcome,), n)


def record_model_call(model: str, version: str, device: str, rows: int, seconds: float) -> None:
    """One model call: its duration and how many rows it served."""
    if not PROCESS.on:
        return
    key = (model, version, device)
    MODEL_INFERENCE.observe(key, seconds * 1000.0)
    MODEL_ROWS.add(key, rows)


@contextlib.contextmanager
def model_call(model: str, version: str, device: str, rows: int) -> Iterator[None]:
    """Time the model call inside the block (one batch of ``rows``) as :func:`record_model_call` does.

    ```python
    with model_call("fraud", scorer.version, str(scorer.device), len(rows)):
        scores = scorer.score(matrix)
    ```
    """
    started = time.perf_counter()
    yield
    record_model_call(model, version, device, rows, time.perf_counter() - started)


def record_generation(model: str, tokens: int, seconds: float) -> None:
    """One LLM generation batch: tokens made and the speed."""
    if not PROCESS.on:
        return
    LLM_TOKENS.add((model,), tokens)
    if seconds > 0:
        LLM_TOKENS_PER_S.set((model,), tokens / seconds)


def record_index(index: str, sizes: dict[str, int], backlog: int, oldest_pending_s: float) -> None:
    """A live index's sizes by unit (documents, chunks, items), its backlog and how stale it is."""
    if not PROCESS.on:
        return
    for unit, n in sizes.items():
        INDEX_SIZE.set((index, unit), n)
    INDEX_BACKLOG.set((index,), backlog)
    INDEX_FRESHNESS.set((index,), oldest_pending_s)
