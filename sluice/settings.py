"""Typed settings for every flow, read from ``SLUICE_*`` environment variables and checked at start.

Each workflow has one frozen settings class (:class:`FraudSettings`,
:class:`AssistantSettings`, ...) built on :class:`FlowSettings`; it owns the
topics the workflow reads and writes. A field ``max_batch`` is read from
``SLUICE_MAX_BATCH``. Values are parsed by the field's type and checked against
its rule, and every problem is reported as one line that names the variable
and what it accepts, so a flow never starts half-configured:

    SLUICE_EXACTLY_ONCE='ture' is not a boolean: use true, false, 1 or 0

Kafka client options (``security.protocol``, SASL, TLS, ...) pass through
untouched from variables named ``SLUICE_KAFKA_<OPTION>``, with dots written as
underscores: ``SLUICE_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` becomes
``security.protocol=SASL_SSL``.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from operators.kafka.connection import PROFILES, KafkaConnection
from operators.kafka.source import StartAt

KAFKA_PREFIX = "SLUICE_KAFKA_"
OBSERVABILITY = "observability"  # the group of the metrics, tracing and alarm settings (their own README table)
# Variables read by tools rather than by a settings class (not flagged as unknown).
TOOL_VARIABLES = frozenset({"SLUICE_REDIS_SERVER", "SLUICE_STACK_KAFKA_PORT", "SLUICE_STACK_REDIS_PORT"})
# Read by the container entrypoint (deploy/entrypoint.sh, README "Running on Kubernetes"), not by a flow.
DEPLOY_VARIABLES = frozenset(
    {
        "SLUICE_FLOW",
        "SLUICE_CLUSTER_SERVICE",
        "SLUICE_CLUSTER_NAMESPACE",
        "SLUICE_CLUSTER_DOMAIN",
        "SLUICE_CLUSTER_PORT",
        "SLUICE_RECOVERY_DIR",
        "SLUICE_RECOVERY_PARTITIONS",
        "SLUICE_START_WAIT_S",
        "SLUICE_DRY_RUN",
    }
)
S = TypeVar("S", bound="FlowSettings")
log = logging.getLogger("sluice.settings")


class SettingsError(ValueError):
    """One or more settings are wrong; each line of the message names a variable."""


def setting(
    default: Any,
    doc: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | Mapping[str, Any] | None = None,
    check: Callable[[Any], object] | None = None,
    group: str = "",
) -> Any:
    """A settings field: its default, one line of documentation, and the rule its value must follow.

    ``check`` raises ``ValueError`` with a message saying what is accepted. ``group``
    puts the field in its own README table (``<!-- settings:Class/group -->``).
    """
    meta: dict[str, Any] = {
        "doc": doc,
        "minimum": minimum,
        "maximum": maximum,
        "choices": tuple(choices) if choices else None,
        "check": check,
        "group": group,
    }
    return field(default=default, metadata=meta)


BY_CPU: dict[str, bool | None] = {"auto": None, "on": True, "off": False}  # a precision switch's choices


def by_cpu(switch: str) -> bool | None:
    """An ``auto``/``on``/``off`` setting as a precision switch: ``None`` (auto) lets the code decide by the CPU.

    >>> by_cpu("auto"), by_cpu("on"), by_cpu("off")
    (None, True, False)
    """
    return BY_CPU[switch]


def env_name(field_name: str) -> str:
    return f"SLUICE_{field_name.upper()}"


def _parse(raw: str, default: Any, name: str) -> Any:
    text = raw.strip()
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in ("1", "true"):
            return True
        if lowered in ("0", "false"):
            return False
        raise SettingsError(f"{name}={raw!r} is not a boolean: use true, false, 1 or 0")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if isinstance(default, float):
        try:
            number = float(text)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a number") from None
        if not math.isfinite(number):  # nan passes every comparison with a minimum, inf every maximum
            raise SettingsError(f"{name}={raw!r} is not a finite number")
        return number
    return raw


def _check(f: Field[Any], value: Any, name: str) -> None:
    meta = f.metadata
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise SettingsError(f"{name}={value!r} is too small: it must be at least {meta['minimum']:g}")
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise SettingsError(f"{name}={value!r} is too large: it must be at most {meta['maximum']:g}")
    if meta.get("choices") and value not in meta["choices"]:
        raise SettingsError(f"{name}={value!r} is not allowed: use one of {', '.join(meta['choices'])}")
    if meta.get("check") is not None:
        try:
            meta["check"](value)
        except ValueError as exc:
            raise SettingsError(f"{name}={value!r}: {exc}") from None


def _kafka_passthrough(env: Mapping[str, str]) -> dict[str, str]:
    return {
        key[len(KAFKA_PREFIX) :].lower().replace("_", "."): value
        for key, value in env.items()
        if key.startswith(KAFKA_PREFIX)
    }


def _redis_url(url: str) -> None:
    if not re.match(r"^(redis|rediss|unix)://", url):
        raise ValueError("a Redis URL starts with redis://, rediss:// or unix:// (e.g. redis://host:6379/0)")


def _device(device: str) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ValueError("use auto, cpu, cuda or cuda:N")


def _topic(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", name):
        raise ValueError("a Kafka topic name is 1-249 characters of letters, digits, '.', '_' and '-'")


def _optional_topic(name: str) -> None:
    if name:
        _topic(name)


def _start(spec: str) -> None:
    StartAt.parse(spec)


def _optional_start(spec: str) -> None:
    if spec:
        StartAt.parse(spec)


def _brokers(spec: str) -> None:
    broker = re.compile(r"([A-Za-z_]+://)?(\[[0-9A-Fa-f:.]+\]|[^\s:,\[\]/]+):\d{1,5}")  # PLAINTEXT://, [::1]
    if not all(broker.fullmatch(b.strip()) for b in spec.split(",")):
        raise ValueError("use host:port, comma-separated")


def _exporter(spec: str) -> None:
    if spec not in ("console", "otlp", "memory") and not (spec.startswith("jsonl:") and len(spec) > 6):
        raise ValueError("use console, otlp, jsonl:PATH or memory")


@dataclass(frozen=True)
class FlowSettings:
    """What every Sluice flow needs: where Kafka and Redis are, the dead-letter topic,
    delivery semantics, where the input starts, and the device for models."""

    all_classes: ClassVar[list[type[FlowSettings]]] = []

    brokers: str = setting("127.0.0.1:19092", "Kafka bootstrap servers (host:port, comma-separated)", check=_brokers)
    broker_profile: str = setting(
        "latency", "client batching and fetching: latency, throughput or kafka (operators/kafka/connection.py)",
        choices=tuple(PROFILES),
    )  # fmt: skip
    redis_url: str = setting("redis://127.0.0.1:16379/0", "Redis (online feature store)", check=_redis_url)
    dlq_topic: str = setting("dead-letters", "dead-letter topic", check=_topic)
    topic_partitions: int = setting(4, "partitions of the topics `sluice stack topics` creates", minimum=1)
    device: str = setting("auto", "where models run: auto (CUDA when present), cpu, cuda, cuda:N", check=_device)
    exactly_once: bool = setting(False, "transactional output, one transaction per epoch (needs -r)")
    transactional_id_prefix: str = setting("sluice", "prefix of the transactional ids (one per output partition)")
    start_from: str = setting(
        "earliest", "where input starts without a checkpoint: earliest, latest, offset:N, time:EPOCH_MS", check=_start
    )
    stop_at_end: bool = setting(False, "stop at the end of the input (backfills, replays)")
    source_batch_size: int = setting(2000, "records a source partition hands over per poll", minimum=1)
    gc_interval_s: float = setting(
        1.0, "collect young objects every this many seconds, from the flow thread (operators/gc_pacing.py); "
        "0: CPython's own allocation-count trigger", minimum=0.0,
    )  # fmt: skip
    gc_full_interval_s: float = setting(
        3600.0, "a full garbage collection (its pause grows with the keyed state) every this many seconds; 0: never",
        minimum=0.0,
    )  # fmt: skip
    log_level: str = setting(
        "info", "Sluice's own log lines (index ready, checkpoint skips, full collections); libraries log warnings",
        choices=("debug", "info", "warning", "error"),
    )  # fmt: skip
    connect_timeout_s: float = setting(15.0, "how long start-up waits for Kafka and Redis before failing", minimum=0.1)
    outage_timeout_s: float = setting(
        60.0, "a running flow whose broker or input topic stays gone this long exits (code 3)", minimum=1.0
    )
    # observability (dataflows/observability.py): metrics, tracing, alarms; their own README table
    metrics_port: int = setting(
        0, "serve Prometheus /metrics on this port (process i: port + i, but in a Kubernetes pod); 0: metrics and alarms off",
        minimum=0, maximum=65535, group=OBSERVABILITY,
    )  # fmt: skip
    metrics_addr: str = setting("0.0.0.0", "address the /metrics server listens on", group=OBSERVABILITY)
    tracing: bool = setting(
        False, "record a span per stage for inputs that carry a W3C traceparent header", group=OBSERVABILITY
    )
    trace_exporter: str = setting(
        "console", "where spans go: console, otlp, jsonl:PATH or memory", check=_exporter, group=OBSERVABILITY
    )
    trace_sample: float = setting(
        1.0, "share of the producer-sampled traces recorded", minimum=0.0, maximum=1.0, group=OBSERVABILITY
    )
    alarms_topic: str = setting(
        "alarms", "drift and health alarms out (one partition)", check=_topic, group=OBSERVABILITY
    )
    slo_ms: float = setting(
        35.0, "latency target: events older than this at the SLO stage burn the SLO", minimum=0.1,
        group=OBSERVABILITY,
    )  # fmt: skip
    alarm_slo_burn: float = setting(
        0.01, "alarm when more than this share of events misses the SLO", minimum=0.0, group=OBSERVABILITY
    )
    alarm_lag_s: float = setting(
        30.0, "alarm when the input lag has grown for this long", minimum=1.0, group=OBSERVABILITY
    )
    alarm_dlq_rate: float = setting(
        0.01, "alarm when more than this share of input is dead-lettered", minimum=0.0, group=OBSERVABILITY
    )
    alarm_fallback_rate: float = setting(
        0.05, "alarm when more than this share of feature-store lookups falls back", minimum=0.0,
        group=OBSERVABILITY,
    )  # fmt: skip
    alarm_window_s: float = setting(
        10.0, "the rates above are over this many seconds", minimum=1.0, group=OBSERVABILITY
    )
    drift_psi: float = setting(0.2, "drift alarm when a window's PSI is over this", minimum=0.0, group=OBSERVABILITY)
    drift_window_s: float = setting(300.0, "drift windows (processing time)", minimum=1.0, group=OBSERVABILITY)
    drift_min_count: int = setting(
        500, "scores a window needs before its drift is judged", minimum=1, group=OBSERVABILITY
    )
    drift_warmup_windows: int = setting(
        1, "a model's first judged windows are not alarmed on: windowed state starts empty", minimum=0,
        group=OBSERVABILITY,
    )  # fmt: skip
    kafka: Mapping[str, str] = field(default_factory=dict)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        FlowSettings.all_classes.append(cls)

    @classmethod
    def settings_fields(cls) -> list[Field[Any]]:
        """The fields read from ``SLUICE_<FIELD>`` (everything but the Kafka pass-through)."""
        return [f for f in fields(cls) if f.name != "kafka"]

    @classmethod
    def from_env(cls: type[S], env: Mapping[str, str] | None = None) -> S:
        """Build settings from ``SLUICE_<FIELD>`` variables; raises :class:`SettingsError` listing every problem.

        >>> FraudSettings.from_env({"SLUICE_BROKERS": "k1:9092,k2:9092", "SLUICE_MAX_BATCH": "64"}).max_batch
        64
        >>> FraudSettings.from_env({"SLUICE_EXACTLY_ONCE": "ture"})
        Traceback (most recent call last):
        ...
        sluice.settings.SettingsError: SLUICE_EXACTLY_ONCE='ture' is not a boolean: use true, false, 1 or 0
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in cls.settings_fields():
            name = env_name(f.name)
            raw = env.get(name)
            value = getattr(cls, f.name) if raw is None else None
            try:
                if raw is not None:
                    value = values[f.name] = _parse(raw, getattr(cls, f.name), name)
                _check(f, value, name)
            except SettingsError as exc:
                problems.append(str(exc))
        if problems:
            raise SettingsError("\n".join(problems))
        _warn_unknown(env)
        settings = cls(**values, kafka=_kafka_passthrough(env))
        if clashes := settings.clashes():
            raise SettingsError("\n".join(clashes))
        return settings

    def clashes(self) -> list[str]:
        """Problems of settings that are each valid alone but not together (one line each)."""
        return []

    @classmethod
    def overrides(cls, pairs: Iterable[str]) -> dict[str, str]:
        """``FIELD=VALUE`` pairs (a benchmark's ``--set``) as ``SLUICE_*`` variables, checked: an unknown
        field or a bad value raises :class:`SettingsError` naming it.

        >>> FraudSettings.overrides(["max_batch=64"])
        {'SLUICE_MAX_BATCH': '64'}
        >>> FraudSettings.overrides(["max_bach=64"])
        Traceback (most recent call last):
        ...
        sluice.settings.SettingsError: max_bach is not a FraudSettings field (did you mean max_batch?)
        """
        known = [f.name for f in cls.settings_fields()]
        env: dict[str, str] = {}
        for pair in pairs:
            name, sep, value = pair.partition("=")
            name = name.strip().lower()
            if not sep or name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                problem = f"{name} is not a {cls.__name__} field{hint}" if sep else f"{pair!r}: expected FIELD=VALUE"
                raise SettingsError(problem)
            env[env_name(name)] = value
        cls.from_env(env)  # bad values fail here
        return env

    def to_env(self) -> dict[str, str]:
        """The ``SLUICE_*`` variables that make :meth:`from_env` rebuild these settings
        (how a flow process is pointed at them).

        >>> FraudSettings.from_env(FraudSettings(max_batch=7).to_env()).max_batch
        7
        """
        env = {
            env_name(f.name): str(int(v) if isinstance(v, bool) else v)
            for f in self.settings_fields()
            if (v := getattr(self, f.name)) is not None
        }
        env.update({KAFKA_PREFIX + k.upper().replace(".", "_"): v for k, v in self.kafka.items()})
        return env

    def connection(self) -> KafkaConnection:
        """The Kafka connection every client of this flow uses."""
        return KafkaConnection(self.brokers, dict(self.kafka), self.broker_profile)

    def input_topics(self) -> list[str]:
        """Topics the flow reads."""
        return []

    def output_topics(self) -> list[str]:
        """Topics the flow writes."""
        return [self.dlq_topic]

    def topics(self) -> dict[str, int]:
        """Every topic of the workflow with the partition count `sluice stack topics` gives it."""
        every = {t: self.topic_partitions for t in [*self.input_topics(), *self.output_topics()]}
        return every | {self.dlq_topic: 1, self.alarms_topic: 1}


def _warn_unknown(env: Mapping[str, str]) -> None:
    known = {env_name(f.name) for c in FlowSettings.all_classes for f in c.settings_fields()}
    known |= TOOL_VARIABLES | DEPLOY_VARIABLES
    for name in env:
        if name.startswith("SLUICE_") and not name.startswith(KAFKA_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            log.warning("unknown setting %s%s", name, f" (did you mean {close[0]}?)" if close else "")


@dataclass(frozen=True)
class FraudSettings(FlowSettings):
    """Runtime configuration of the fraud flow (:mod:`dataflows.fraud`)."""

    transactions_topic: str = setting("transactions", "card transactions in", check=_topic)
    decisions_topic: str = setting("fraud-decisions", "decisions out", check=_topic)
    labels_topic: str = setting(
        "fraud-labels", "fraud labels from the generator (the flow never reads it)", check=_topic
    )
    max_batch: int = setting(1024, "inference micro-batch size", minimum=1)
    max_wait_ms: float = setting(1.0, "micro-batch deadline from its first item", minimum=0.0)
    inference_shards: int = setting(
        0, "shard keys for batching (0: one on each worker; N: N keys placed by hash)", minimum=0
    )
    model_path: str = setting("models/artifacts/fraud", "model artifact folder (LATEST names the version)")
    profile_cache_ttl_s: float = setting(30.0, "how long a card profile is cached", minimum=0.0)
    card_idle_timeout_s: float = setting(
        3660.0,
        "window state of an idle card is dropped after this (keep it at least the window's hour plus "
        "SLUICE_ALLOWED_LATENESS_S, or whether a card was dropped yet could change a replayed decision)",
        minimum=1.0,
    )
    window_buckets: int = setting(
        64,
        "the cards' windows are kept in this many checkpointed buckets (0: one key per card, for millions of "
        "cards with a recovery store); a recovery store resumes only with its count",
        minimum=0,
    )
    allowed_lateness_s: float = setting(60.0, "how far out of order an event may arrive", minimum=0.0)
    max_event_ahead_s: float = setting(
        3600.0, "an event dated further ahead of the clock is decided without moving its card's window", minimum=0.0
    )
    redis_timeout_ms: float = setting(500.0, "Redis socket timeout for profile lookups", minimum=1.0)
    transactional_id_prefix: str = setting("sluice-fraud", "prefix of the transactional ids (one per output partition)")
    stage1_model: str = setting(
        "best", "stage-1 model: gbt (trees), mlp, or best (what training found better)", choices=("best", "gbt", "mlp")
    )
    cascade: bool = setting(True, "escalate the uncertain band to the sequence model (false: stage 1 decides alone)")
    stage2_max_batch: int = setting(256, "stage-2 (sequence model) micro-batch size", minimum=1)
    stage2_max_wait_ms: float = setting(2.0, "stage-2 micro-batch deadline", minimum=0.0)
    model_check_s: float = setting(
        2.0, "how often the flow looks for a newly promoted or shadowed model (swapped at a checkpoint)", minimum=0.0
    )
    features_topic: str = setting(
        "fraud-features", "feature log: each decision's exact model inputs (empty: not logged)", check=_optional_topic
    )
    shadow_topic: str = setting("shadow-decisions", "decisions of the shadowed candidate model", check=_topic)
    rationales_topic: str = setting(
        "fraud-rationales", "analyst notes for reviews and large declines (empty: none)", check=_optional_topic
    )
    rationale_mode: str = setting(
        "auto", "llm (checked, template when it fails), template, or auto (llm on a GPU, else template)",
        choices=("auto", "llm", "template"),
    )  # fmt: skip
    rationale_min_decline_amount: float = setting(
        500.0, "declines of at least this amount get a rationale (reviews always do)", minimum=0.0
    )
    rationale_deadline_s: float = setting(
        5.0, "an LLM note not ready this long after its decision is replaced by the template note", minimum=0.1
    )
    rationale_max_batch: int = setting(16, "LLM rationale micro-batch size", minimum=1)

    def input_topics(self) -> list[str]:
        return [self.transactions_topic]

    def output_topics(self) -> list[str]:
        optional = [t for t in (self.features_topic, self.rationales_topic) if t]
        return [self.decisions_topic, self.dlq_topic, self.shadow_topic, self.alarms_topic, *optional]

    def topics(self) -> dict[str, int]:
        return super().topics() | {self.labels_topic: self.topic_partitions}


@dataclass(frozen=True)
class AssistantSettings(FlowSettings):
    """Runtime configuration of the conversational assistant flow (:mod:`dataflows.assistant`)."""

    documents_topic: str = setting("documents", "document upserts and deletes in (one partition)", check=_topic)
    requests_topic: str = setting("chat-requests", "chat turns in", check=_topic)
    requests_start_from: str = setting(
        "",
        "where chat requests start (empty: like START_FROM; latest rebuilds the index without re-answering)",
        check=_optional_start,
    )
    responses_topic: str = setting("chat-responses", "answers out", check=_topic)
    handoff_topic: str = setting("handoff", "turns handed to a human", check=_topic)
    index_changes_topic: str = setting("documents-indexed", "what each document event did to the index", check=_topic)
    dlq_topic: str = setting("assistant-dead-letters", "dead-letter topic", check=_topic)
    max_request_chars: int = setting(2000, "longest chat turn answered", minimum=1)
    max_turns: int = setting(6, "turns remembered per session", minimum=0)
    session_idle_timeout_s: float = setting(900.0, "a session idle this long is forgotten", minimum=1.0)
    chunk_tokens: int = setting(160, "chunk size in encoder tokens", minimum=16, maximum=256)
    chunk_overlap: int = setting(32, "overlap between chunks in tokens (less than SLUICE_CHUNK_TOKENS)", minimum=0)
    top_k: int = setting(
        5,
        "passages the answer is chosen from and cited (the eval: 0.605 answered right with 5, 0.563 with 3)",
        minimum=1,
        maximum=20,
    )
    prompt_passages: int = setting(
        3, "passages quoted to the LLM: this many best ones, and down to the one the extractive answer cites", minimum=1
    )
    context_chars: int = setting(400, "characters per passage in the prompt", minimum=50)
    embed_max_batch: int = setting(64, "embedding micro-batch size", minimum=1)
    embed_max_wait_ms: float = setting(2.0, "embedding micro-batch deadline", minimum=0.0)
    embed_shards: int = setting(0, "shard keys for embedding (0: one on each worker)", minimum=0)
    embed_async: bool = setting(
        True, "embed turns on a background thread (the encoder computes without the GIL while the flow goes on)"
    )
    torch_threads: int = setting(1, "intra-op threads of torch and faiss per process (0: their default)", minimum=0)
    encoder_int8: bool = setting(
        False,
        "row-wise int8 encoder on CPU (batch-independent; faster only where int8 matmuls are; needs a fresh index)",
    )
    encoder_bf16: str = setting(
        "auto",
        "bf16 encoder on CPU: auto (where the CPU multiplies bf16 natively: AMX or AVX512-BF16; half the CPU of "
        "fp32), on, or off (fp32); bf16 and fp32 vectors share an index",
        choices=tuple(BY_CPU),
    )
    answer_mode: str = setting(
        "auto",
        "extractive (the passages' best sentences), generate (LLM rewrite, kept where supported) or auto "
        "(generate on a GPU, else extractive)",
        choices=("auto", "extractive", "generate"),
    )
    index_budget_chars: int = setting(
        20_000, "document characters indexed per step (keeps the worker responsive)", minimum=1
    )
    index_max_wait_ms: float = setting(
        10_000.0, "longest a question waits for documents published before it to be indexed", minimum=0.0
    )
    llm_path: str = setting("", "LLM folder (empty: the converted SmolLM2)")
    gen_max_batch: int = setting(16, "generation micro-batch size", minimum=1)
    gen_max_wait_ms: float = setting(5.0, "generation micro-batch deadline", minimum=0.0)
    gen_shards: int = setting(0, "shard keys for generation (0: one on each worker)", minimum=0)
    gen_max_new_tokens: int = setting(48, "longest generated answer in tokens", minimum=1)
    gen_min_new_tokens: int = setting(
        12, "a turn that cannot get this many tokens before its deadline is not generated", minimum=1
    )
    gen_deadline_ms: float = setting(10_000.0, "a turn's answer deadline from its send time", minimum=1.0)
    transactional_id_prefix: str = setting(
        "sluice-assistant", "prefix of the transactional ids (one per output partition)"
    )
    source_batch_size: int = setting(500, "records a source partition hands over per poll", minimum=1)
    slo_ms: float = setting(110.0, "latency target of the retrieval path (question age when searched)", minimum=0.1)

    @property
    def bf16(self) -> bool | None:
        """``encoder_bf16`` as :class:`models.text_encoder.TextEncoder` takes it (``None``: decide by the CPU)."""
        return by_cpu(self.encoder_bf16)

    def clashes(self) -> list[str]:
        if self.chunk_overlap >= self.chunk_tokens:  # chunking could not move forward: the first document fails
            return [
                f"SLUICE_CHUNK_OVERLAP={self.chunk_overlap} must be less than SLUICE_CHUNK_TOKENS={self.chunk_tokens}"
            ]
        return []

    def input_topics(self) -> list[str]:
        return [self.documents_topic, self.requests_topic]

    def output_topics(self) -> list[str]:
        return [self.responses_topic, self.handoff_topic, self.index_changes_topic, self.dlq_topic, self.alarms_topic]

    def topics(self) -> dict[str, int]:
        single = {self.documents_topic: 1, self.handoff_topic: 1, self.index_changes_topic: 1}
        return super().topics() | single


def settings_table(cls: type[FlowSettings], base: type[FlowSettings] | None = None, group: str | None = None) -> str:
    """A Markdown table of ``cls``'s variables, defaults and meanings (fields of ``base`` left out; only
    those of ``group`` when given)."""
    inherited = {f.name for f in base.settings_fields()} if base else set()
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in cls.settings_fields():
        if f.name in inherited and getattr(cls, f.name) == getattr(base, f.name):
            continue
        if group is not None and f.metadata.get("group", "") != group:
            continue
        default = getattr(cls, f.name)
        shown = str(int(default)) if isinstance(default, bool) else (str(default) if default != "" else "(empty)")
        rows.append(f"| `{env_name(f.name)}` | `{shown}` | {f.metadata.get('doc', '')} |")
    return "\n".join(rows)


def update_readme_tables(text: str) -> str:
    """``text`` (the README) with every ``<!-- settings:Class -->`` (or ``Class/group``) ... ``<!-- /settings -->``
    block regenerated."""
    known: list[type[FlowSettings]] = [FlowSettings]
    known += FlowSettings.all_classes
    classes = {c.__name__: c for c in known}

    def table(match: re.Match[str]) -> str:
        cls = classes[match.group(1)]
        body = settings_table(cls, None if cls is FlowSettings else FlowSettings, match.group(2) or "")
        name = match.group(1) + (f"/{match.group(2)}" if match.group(2) else "")
        return f"<!-- settings:{name} -->\n{body}\n<!-- /settings -->"

    return re.sub(r"<!-- settings:(\w+)(?:/(\w+))? -->\n.*?<!-- /settings -->", table, text, flags=re.S)


# --- personalization (dataflows/personalize.py) -------------------------------------------------------------------


def _kind_weights(spec: str) -> None:
    from models.user_taste import parse_kind_weights

    parse_kind_weights(spec)


@dataclass(frozen=True)
class PersonalizeSettings(FlowSettings):
    """Runtime configuration of the personalization flow (:mod:`dataflows.personalize`)."""

    catalog_topic: str = setting("catalog", "item upserts and deletes in", check=_topic)
    interactions_topic: str = setting("interactions", "user interactions in (keyed by user)", check=_topic)
    requests_topic: str = setting("recommend-requests", "recommendation requests in", check=_topic)
    rules_topic: str = setting("rules", "versioned rule sets in (one partition)", check=_topic)
    recommendations_topic: str = setting("recommendations", "recommendations out", check=_topic)
    catalog_changes_topic: str = setting(
        "catalog-indexed", "what each catalogue event did to each index replica", check=_topic
    )
    heldout_topic: str = setting(
        "interactions-heldout", "held-out next interactions from the generator (the flow never reads it)", check=_topic
    )
    dlq_topic: str = setting("personalize-dead-letters", "dead-letter topic", check=_topic)
    transactional_id_prefix: str = setting(
        "sluice-personalize", "prefix of the transactional ids (one per output partition)"
    )
    redis_namespace: str = setting("shop", "prefix of the Redis hashes: <ns>-item:<id>, <ns>-user:<id>", check=_topic)
    encoder_int8: str = setting(
        "auto",
        "row-wise int8 item encoder on CPU: auto (where the CPU has int8 dot products: VNNI or AMX; on AVX2 alone "
        "int8 is ~40x slower than fp32), on, or off; a change re-embeds the items",
        choices=tuple(BY_CPU),
    )
    torch_threads: int = setting(1, "intra-op threads of torch and faiss per process (0: their default)", minimum=0)
    embed_max_batch: int = setting(256, "item embedding micro-batch size", minimum=1)
    embed_max_wait_ms: float = setting(20.0, "item embedding micro-batch deadline", minimum=0.0)
    kind_weights: str = setting(
        "view=1,click=2,add_to_cart=4,purchase=8", "weight of each interaction kind in a user's taste",
        check=_kind_weights,
    )  # fmt: skip
    taste_half_life_h: float = setting(
        24.0, "an interaction's weight in the taste halves every this many hours", minimum=0.01
    )
    max_seen: int = setting(
        100, "recent items remembered per user (exclusions; up to 25% more between trims)", minimum=1
    )
    write_shards: int = setting(4, "shard keys of the Redis write-through steps", minimum=1)
    user_cache_ttl_ms: float = setting(1000.0, "how long a user's vector read from Redis is reused", minimum=0.0)
    item_cache_ttl_s: float = setting(60.0, "how long an item read from Redis is reused (interactions)", minimum=0.0)
    redis_timeout_ms: float = setting(500.0, "Redis socket timeout", minimum=1.0)
    index_replicas: int = setting(1, "copies of the item index (0: one on each worker)", minimum=0)
    ann_nlist: int = setting(1024, "most IVF cells of the item index (at least 39 items a cell)", minimum=1)
    ann_nprobe: int = setting(16, "IVF cells scanned per search", minimum=1)
    ann_train_at: int = setting(10_000, "items before the index switches from exact to IVF", minimum=1)
    overfetch: int = setting(5, "candidates searched per recommended item (before rules)", minimum=1)
    max_fetch: int = setting(300, "most candidates searched for one request", minimum=1)
    max_k: int = setting(100, "largest k a request may ask for", minimum=1)
    popularity_half_life_s: float = setting(900.0, "popularity counts halve every this many seconds", minimum=1.0)
    max_event_ahead_s: float = setting(
        3600.0, "an interaction dated further ahead of the clock is dead-lettered (it would decay all counts)",
        minimum=0.0,
    )  # fmt: skip
    popularity_top_n: int = setting(200, "popular items kept per category", minimum=1)
    popularity_emit_ms: float = setting(
        1000.0, "how often a category's popularity is re-sent to the replicas", minimum=1.0
    )
    source_batch_size: int = setting(1000, "records a source partition hands over per poll", minimum=1)
    slo_ms: float = setting(80.0, "latency target of a recommendation (request age when ranked)", minimum=0.1)

    @property
    def int8(self) -> bool | None:
        """``encoder_int8`` as :class:`models.text_encoder.TextEncoder` takes it (``None``: decide by the CPU)."""
        return by_cpu(self.encoder_int8)

    def input_topics(self) -> list[str]:
        return [self.catalog_topic, self.interactions_topic, self.requests_topic, self.rules_topic]

    def output_topics(self) -> list[str]:
        return [self.recommendations_topic, self.catalog_changes_topic, self.dlq_topic, self.alarms_topic]

    def topics(self) -> dict[str, int]:
        single = {self.rules_topic: 1, self.catalog_changes_topic: 1}
        return super().topics() | {self.heldout_topic: self.topic_partitions} | single


# --- Review chains (human in the loop): dataflows/review.py and the reviewer web app (sluice/review_web) ---

DEVELOPMENT_TOKEN_KEY = b"sluice-development-token-key-not-for-production"
MIN_SECRET_CHARS = 32


# Kafka options passed through that hold credentials (librdkafka's sensitive properties)
SECRET_KAFKA_OPTION = re.compile(r"^SLUICE_KAFKA_.*(PASSWORD|SECRET|SSL_KEY|KEYSTORE|JAAS|TOKEN|OAUTHBEARER_CONFIG)")
URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]+@")


def is_secret(name: str, cls: type[FlowSettings]) -> bool:
    """Whether the ``SLUICE_*`` variable ``name`` holds a credential for flows of ``cls``.

    >>> is_secret("SLUICE_KAFKA_SASL_PASSWORD", ReviewSettings), is_secret("SLUICE_REVIEW_TOKEN_KEY", ReviewSettings)
    (True, True)
    >>> is_secret("SLUICE_KAFKA_SASL_OAUTHBEARER_CONFIG", FraudSettings), is_secret("SLUICE_MAX_NEW_TOKENS", FraudSettings)
    (True, False)
    """
    if SECRET_KAFKA_OPTION.search(name):
        return True
    return any(env_name(f.name) == name and f.metadata.get("secret") for f in cls.settings_fields())


def _secret(doc: str) -> Any:
    """A setting that holds a secret: empty by default, never printed by ``sluice settings``."""
    return field(default="", metadata={**setting("", doc).metadata, "secret": True})


def _port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError("a TCP port is 1-65535")


@dataclass(frozen=True)
class ReviewSettings(FlowSettings):
    """Runtime configuration of the review chain flow (:mod:`dataflows.review`) and of the reviewer
    web app (``sluice review serve``)."""

    broker_profile: str = setting(
        "throughput", "client batching and fetching: people wait seconds, so fewer, fuller fetches spare the broker",
        choices=tuple(PROFILES),
    )  # fmt: skip
    decisions_topic: str = setting("fraud-decisions", "the fraud flow's decisions in", check=_topic)
    decisions_start_from: str = setting(
        "", "where fraud decisions start without a checkpoint (empty: like START_FROM)", check=_optional_start
    )
    verdicts_topic: str = setting("review-verdicts", "reviewers' verdicts in (the web app writes them)", check=_topic)
    policies_topic: str = setting("review-policies", "versioned chain policies in (one partition)", check=_topic)
    cases_topic: str = setting(
        "review-cases", "case snapshots out: opened, each verdict, escalation, close", check=_topic
    )
    rejections_topic: str = setting("review-rejections", "refused verdicts out, with the reason", check=_topic)
    final_decisions_topic: str = setting("final-decisions", "one final decision per case out", check=_topic)
    audit_topic: str = setting("audit", "hash-chained audit records out", check=_topic)
    rationale_topic: str = setting(
        "fraud-rationales", "the fraud flow's analyst notes, shown on case pages (empty: none)", check=_optional_topic
    )
    dlq_topic: str = setting("review-dead-letters", "dead-letter topic", check=_topic)
    exactly_once: bool = setting(True, "transactional output, one transaction per epoch (needs -r)")
    transactional_id_prefix: str = setting(
        "sluice-review", "prefix of the transactional ids (one per output partition)"
    )
    review_decline_above: float = setting(500.0, "declines of at least this amount also go to people", minimum=0.0)
    review_policy_file: str = setting("", "policy used until one is published (empty: the built-in policy)")
    review_history_size: int = setting(10, "earlier decisions of the card shown on a case (0: none)", minimum=0)
    review_history_idle_s: float = setting(86_400.0, "a card's history is forgotten after this idle time", minimum=1.0)
    review_closed_retention_s: float = setting(
        7 * 86_400.0, "a closed case is remembered this long (late verdicts are told it is closed)", minimum=1.0
    )
    review_token_key: str = _secret("key of the card tokens (HMAC); at least 32 characters in production")
    review_production: bool = setting(False, "refuse development defaults: token key, session secret, credentials")
    review_session_secret: str = _secret("key that signs reviewers' session cookies (at least 32 characters)")
    review_credentials_file: str = setting("", "reviewers' hashed credentials (`sluice review add-reviewer`)")
    review_host: str = setting("127.0.0.1", "address the web app listens on")
    review_port: int = setting(8700, "port the web app listens on", check=_port)
    review_session_hours: float = setting(8.0, "a sign-in lasts this long", minimum=0.01)

    def input_topics(self) -> list[str]:
        return [self.decisions_topic, self.verdicts_topic, self.policies_topic]

    def output_topics(self) -> list[str]:
        return [
            self.cases_topic,
            self.rejections_topic,
            self.final_decisions_topic,
            self.audit_topic,
            self.dlq_topic,
        ]

    def topics(self) -> dict[str, int]:
        extra = {self.rationale_topic: self.topic_partitions} if self.rationale_topic else {}
        return super().topics() | {self.policies_topic: 1} | extra

    def with_own_topics(self, tag: str) -> ReviewSettings:
        """These settings with every topic the review chain owns, and its transactional ids, suffixed by
        ``-tag`` (tests, benchmarks, a second chain beside the first); the fraud flow's decisions and notes it
        reads are kept."""
        import dataclasses

        read_from_fraud = {"decisions_topic", "rationale_topic"}
        owned = [f.name for f in self.settings_fields() if f.name.endswith("_topic") and f.name not in read_from_fraud]
        renamed: dict[str, Any] = {name: f"{getattr(self, name)}-{tag}" for name in owned if getattr(self, name)}
        return dataclasses.replace(self, transactional_id_prefix=f"{self.transactional_id_prefix}-{tag}", **renamed)

    def token_key(self) -> bytes:
        """The card-token key; a development key (with a warning) unless in production."""
        if len(self.review_token_key) >= MIN_SECRET_CHARS:
            return self.review_token_key.encode()
        if self.review_production or self.review_token_key:
            raise SettingsError(
                f"SLUICE_REVIEW_TOKEN_KEY must hold at least {MIN_SECRET_CHARS} characters"
                + (" (SLUICE_REVIEW_PRODUCTION=1)" if self.review_production else "")
            )
        log.warning("SLUICE_REVIEW_TOKEN_KEY is not set: card tokens use the development key")
        return DEVELOPMENT_TOKEN_KEY
