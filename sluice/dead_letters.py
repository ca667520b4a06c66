"""``sluice dlq summary | list | redrive``: what a flow dead-lettered, and sending it back once the cause is fixed.

A dead letter (:class:`operators.dead_letter.DeadLetter`) holds the input's original
key and bytes, the reason, the step that rejected it and the input's position.
Some causes are fixed later without touching the input: an interaction that named
an item the catalogue did not have yet, a rule set that referred to a segment
added since, a bug fixed in a release. For those, ``redrive`` produces the
selected letters' original key and value again to the topic they were consumed
from (or ``--to``), where the flow reads them as new input.

Each dead letter is redriven at most once. Every redriven letter gets a ledger
record (key: the letter's own ``topic/partition/offset``) on ``<dlq>-redriven``,
written in the same Kafka transaction as the record it sent, so a redrive that
stops half way has sent exactly the letters its ledger names and a rerun sends the
rest. Selections may overlap: a letter already in the ledger is skipped whichever
selection matches it again (``--again`` sends it anyway). Two redrives at once
cannot both send a letter: the producer's ``transactional.id`` is fixed per
dead-letter topic, and each redrive fences the earlier ones *before* it reads the
ledger (:class:`Redriver`), so the earlier one can no longer commit.

Retries. ``--every SECONDS`` keeps the command running as a retrier for a
transient cause (the item store was unreachable, an item not in the catalogue
yet): each cycle sends what was dead-lettered since. A redriven record carries
``redrive.attempt``; when the flow rejects it again, its new dead letter keeps
that count (:class:`operators.dead_letter.DeadLetter` copies the header), and an
input that has failed after ``--max-attempts`` redrives (5 with ``--every``) is
left for a person to look at, so a cause that is not transient does not cycle
forever. A retrier reads the ledger once, after it has fenced every earlier redrive
(from then on only its own sends can add to it), and the dead-letter topic
incrementally (:class:`LetterTail`): each cycle reads the letters appended since the
last one, so a cycle costs what is new, not the whole topic. Every letter is
planned once: what a cycle leaves (unselected, out of attempts, a reference, ...)
stays left.

What is not redriven, and why, is reported by name:

* a copy of an input the flow did process, kept for inspection (``dlq.decided``:
  the fraud flow's duplicates and events dated too far ahead, which were decided);
* a letter holding a *reference* instead of its bytes (the original was too
  large to dead-letter): its original is still at the position it names, if the
  topic's retention kept it;
* an input out of attempts (``--max-attempts``);
* a letter whose key was cut to 1 kB (``dlq.key_truncated``): sent back, it would
  land under another key, and so on another partition and in another key's state;
* a letter without a ``source.topic`` header, unless ``--to`` names a topic.

Redriven records carry ``redrive.of`` (the input's ``sluice.id`` as it first
arrived, kept across redrives),
``redrive.from`` (the dead letter's position) and ``redrive.attempt`` headers, and the input's trace
headers, so a trace continues across the redrive. They are new input at a new
position: the flow gives them new identities, and a flow that keeps per-key
history (a window, a duplicate check) treats them by their content and event time
like any other input: an event too old for its window is dead-lettered again,
with that reason.

On a broker that shows aborted transactions to ``read_committed`` readers (Tansu
0.6; see the README), the records and ledger entries of a redrive that failed and
aborted stay visible, so its letters count as redriven; run that selection again
with ``--again`` after checking the target topic.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from operators.dead_letter import (
    DECIDED_HEADER,
    KEY_TRUNCATED_HEADER,
    REASON_HEADER,
    REDRIVE_ATTEMPT,
    REDRIVE_OF,
    REFERENCE_HEADER,
    STEP_HEADER,
)
from operators.kafka.admin import (
    TopicsMissing,
    create_topics,
    list_partitions,
    log,
    read_all,
    read_to_end,
    require_topics,
)
from operators.kafka.connection import KafkaConnection
from operators.kafka.records import ID_HEADER, header_value
from operators.metrics import reason_class
from operators.tracing import header_pairs
from sluice.cli import AT_LEAST_ONE, COUNT, FLOWS, POSITIVE

LEDGER_SUFFIX = "-redriven"
REDRIVE_FROM = "redrive.from"
DEFAULT_MAX_ATTEMPTS = 5  # with --every: an input that failed this often after redrives is left for a person
CHUNK = 5_000  # letters per transaction: a failure loses at most this much progress, never sends anything twice
CHUNK_BYTES = 32 << 20  # and bytes: well inside librdkafka's queue and a transaction's timeout


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter as read back from its topic."""

    id: str  # its own position, ``dlq/partition/offset``
    reason: str
    step: str
    origin: str  # the input's ``sluice.id`` (``topic/partition/offset``), "" if the header is missing
    source_topic: str
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    reference: bool
    trace: list[tuple[str, bytes]] = field(default_factory=list)
    decided: bool = False  # a copy kept for inspection of an input the flow processed
    attempt: int = 0  # how many times this input had been redriven when the flow rejected it
    key_truncated: bool = False  # the key was too long to keep whole: sending it back would change its key

    @classmethod
    def from_message(cls, msg: Message) -> Letter:
        """A consumed dead letter; its ``origin`` is the input as it first arrived, across redrives."""
        headers = msg.headers() or []

        def text(name: str) -> str:
            raw = header_value(headers, name)
            return raw.decode("utf-8", "replace") if raw is not None else ""

        def flag(name: str) -> bool:
            return header_value(headers, name) == b"1"

        return cls(
            id=f"{msg.topic()}/{msg.partition()}/{msg.offset()}",
            reason=text(REASON_HEADER),
            step=text(STEP_HEADER),
            origin=text(REDRIVE_OF) or text(ID_HEADER),
            source_topic=text("source.topic"),
            key=msg.key(),
            value=msg.value(),
            timestamp_ms=msg.timestamp()[1],
            reference=flag(REFERENCE_HEADER),
            trace=header_pairs(headers),
            decided=flag(DECIDED_HEADER),
            attempt=_count(header_value(headers, REDRIVE_ATTEMPT)),
            key_truncated=flag(KEY_TRUNCATED_HEADER),
        )

    def as_json(self, redriven: bool) -> dict[str, Any]:
        """One line of ``sluice dlq list``: the value as text when it is UTF-8, else its size.

        >>> Letter("d/0/3", "not valid JSON: x", "parse", "tx/1/9", "tx", b"k", b"\\xff", 5, False).as_json(True)
        ... # doctest: +NORMALIZE_WHITESPACE
        {'id': 'd/0/3', 'step': 'parse', 'reason': 'not valid JSON: x', 'origin': 'tx/1/9', 'source_topic': 'tx',
         'timestamp_ms': 5, 'redriven': True, 'key': 'k', 'value': None, 'value_bytes': 1}
        """
        return {
            "id": self.id,
            "step": self.step,
            "reason": self.reason,
            "origin": self.origin,
            "source_topic": self.source_topic,
            "timestamp_ms": self.timestamp_ms,
            "redriven": redriven,
            "key": _text(self.key),
            "value": _text(self.value),
            "value_bytes": len(self.value or b""),
            **({"reference": True} if self.reference else {}),
            **({"decided": True} if self.decided else {}),
            **({"attempt": self.attempt} if self.attempt else {}),
        }


def _count(raw: bytes | None) -> int:
    """A header's count (0 when absent or not a count).

    >>> _count(b"3"), _count(None), _count(b"x")
    (3, 0, 0)
    """
    return int(raw) if raw is not None and raw.isdigit() else 0


def _text(raw: bytes | None) -> str | None:
    """Bytes as text when they are UTF-8 (else None).

    >>> _text(b"caf\\xc3\\xa9"), _text(b"\\xff"), _text(None)
    ('café', None, None)
    """
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class Selection:
    """Which letters a command means: every given filter must match (none given: all).

    >>> d = Letter("d/0/1", "unknown item 'i9': it is not in the catalogue", "items", "in/0/4", "in", None, b"", 0, False)
    >>> Selection(reason="UNKNOWN ITEM").matches(d), Selection(step="parse").matches(d), Selection().matches(d)
    (True, False, True)
    >>> Selection(source_topic="in", reason="catalogue").matches(d), Selection(source_topic="i").matches(d)
    (True, False)
    >>> p = Letter("d/0/2", "not valid JSON", "fraud.parse", "tx/0/1", "tx", None, b"{", 0, False)
    >>> Selection(step="parse").matches(p), Selection(step="fraud.parse").matches(p), Selection(step="arse").matches(p)
    (True, True, False)
    """

    reason: str = ""  # a substring of the reason, case-insensitive
    step: str = ""  # the step's id (``fraud.parse``) or its last part (``parse``)
    source_topic: str = ""  # the topic the input was read from, exactly

    def matches(self, letter: Letter) -> bool:
        return (
            (not self.reason or self.reason.casefold() in letter.reason.casefold())
            and (not self.step or self.step in (letter.step, letter.step.rpartition(".")[2]))
            and (not self.source_topic or letter.source_topic == self.source_topic)
        )

    @property
    def chosen(self) -> bool:
        return bool(self.reason or self.step or self.source_topic)


@dataclass
class Plan:
    """What a redrive sends where, and how many letters it leaves, by why."""

    send: list[tuple[Letter, str]] = field(default_factory=list)
    left: Counter[str] = field(default_factory=Counter)

    def describe(self, sent: bool) -> list[str]:
        """The report's lines.

        >>> p = Plan([(Letter("d/0/1", "r", "items", "in/0/4", "in", None, b"", 0, False), "in")], Counter(already=2))
        >>> p.describe(sent=False)
        ['would redrive 1 dead letter: 1 to in (step items)', 'left: already redriven 2']
        """
        verb = "redrove" if sent else "would redrive"
        if not self.send:
            lines = [f"{verb} nothing"]
        else:
            by_target = Counter(target for _, target in self.send)
            steps = Counter(letter.step for letter, _ in self.send)
            targets = ", ".join(f"{n} to {t}" for t, n in sorted(by_target.items()))
            how = ", ".join(f"step {s}" + (f" {n}" if len(steps) > 1 else "") for s, n in sorted(steps.items()))
            lines = [f"{verb} {len(self.send)} dead letter{'s' * (len(self.send) != 1)}: {targets} ({how})"]
        if self.left:
            lines.append(
                "left: " + ", ".join(f"{text} {self.left[why]}" for why, text in _LEFT.items() if self.left[why])
            )
        return lines


_LEFT = {
    "already": "already redriven",
    "decided": "copies of inputs the flow processed (kept for inspection)",
    "attempts": "out of attempts (--max-attempts)",
    "key": "with a key cut to 1 kB (sent back, it would land under another key)",
    "reference": "holding a reference, not the bytes (the original is at its source position)",
    "no_source": "without a source topic (use --to)",
    "unselected": "not selected",
    "limit": "over --limit",
}


def plan(
    letters: Iterable[Letter],
    selection: Selection,
    redriven: set[str],
    to: str = "",
    limit: int | None = None,
    again: bool = False,
    max_attempts: int | None = None,
) -> Plan:
    """Which letters a redrive sends, and where, in the dead-letter topic's order.

    >>> a = Letter("d/0/1", "unknown item 'x'", "items", "in/0/4", "in", None, b"{}", 0, False)
    >>> b = Letter("d/0/2", "unknown item 'y'", "items", "in/0/5", "in", None, b"{}", 0, True)
    >>> c = Letter("d/0/3", "not valid JSON", "parse", "in/0/6", "in", None, b"{", 0, False)
    >>> p = plan([a, b, c], Selection(reason="unknown item"), redriven=set())
    >>> [(l.id, t) for l, t in p.send], dict(p.left)
    ([('d/0/1', 'in')], {'reference': 1, 'unselected': 1})
    >>> plan([a, c], Selection(), redriven={"d/0/1"}, to="staging").send[0][1], dict(plan([a], Selection(), {"d/0/1"}).left)
    ('staging', {'already': 1})
    >>> len(plan([a], Selection(), {"d/0/1"}, again=True).send), dict(plan([a, c], Selection(), set(), limit=1).left)
    (1, {'limit': 1})
    >>> from dataclasses import replace
    >>> dict(plan([replace(a, decided=True)], Selection(), set(), again=True).left)  # never, not even --again
    {'decided': 1}
    >>> dict(plan([replace(a, attempt=3)], Selection(), set(), max_attempts=3).left)  # sent back 3 times, failed 3 times
    {'attempts': 1}
    >>> dict(plan([replace(a, key_truncated=True)], Selection(), set()).left)  # under a cut key: another partition
    {'key': 1}
    """
    out = Plan()
    for letter in letters:
        why = ""
        if not selection.matches(letter):
            why = "unselected"
        elif letter.id in redriven and not again:
            why = "already"
        elif letter.decided:
            why = "decided"
        elif max_attempts is not None and letter.attempt >= max_attempts:
            why = "attempts"
        elif letter.reference:
            why = "reference"
        elif letter.key_truncated:
            why = "key"
        elif not (to or letter.source_topic):
            why = "no_source"
        elif limit is not None and len(out.send) >= limit:
            why = "limit"
        if why:
            out.left[why] += 1
        else:
            out.send.append((letter, to or letter.source_topic))
    return out


@dataclass
class Group:
    """Dead letters of one step and reason class (``sluice dlq summary``)."""

    step: str
    reason_class: str
    count: int = 0
    redriven: int = 0
    source_topics: Counter[str] = field(default_factory=Counter)
    example: str = ""
    first_ms: int = 0
    last_ms: int = 0


def summarize(letters: Iterable[Letter], redriven: set[str]) -> list[Group]:
    """Letters grouped by step and reason class, the largest group first.

    >>> ls = [Letter(f"d/{i}/0", f"field 'amount' out of range [{i}]", "parse", "", "tx", None, b"", at, False)
    ...       for i, at in enumerate((5, 1, 9))]  # read partition by partition: not in time order
    >>> [(g.step, g.reason_class, g.count, g.redriven, g.first_ms, g.last_ms) for g in summarize(ls, {"d/1/0"})]
    [('parse', 'field out of range', 3, 1, 1, 9)]
    """
    groups: dict[tuple[str, str], Group] = {}
    for letter in letters:
        label = reason_class(letter.reason)
        g = groups.get((letter.step, label))
        if g is None:
            at = letter.timestamp_ms
            g = groups[(letter.step, label)] = Group(letter.step, label, example=letter.reason, first_ms=at, last_ms=at)
        g.count += 1
        g.redriven += letter.id in redriven
        g.source_topics[letter.source_topic or "?"] += 1
        g.first_ms, g.last_ms = min(g.first_ms, letter.timestamp_ms), max(g.last_ms, letter.timestamp_ms)
    return sorted(groups.values(), key=lambda g: (-g.count, g.step, g.reason_class))


# --- Kafka ------------------------------------------------------------------------------------------------------------


def ledger_topic(dlq_topic: str) -> str:
    """Where the redrives of ``dlq_topic`` are recorded, one entry per letter."""
    return dlq_topic + LEDGER_SUFFIX


def read_letters(conn: KafkaConnection, dlq_topic: str, timeout_s: float) -> list[Letter]:
    """Every committed dead letter of ``dlq_topic``, partition by partition in offset order."""
    return LetterTail(conn, dlq_topic, timeout_s).read_new()


class LetterTail:
    """The dead letters of a topic, read incrementally: each :meth:`read_new` returns the letters appended
    since the previous one (all of them the first time), partition by partition in offset order.

    It remembers where each partition's last read ended; a partition added to the topic since is read
    from its start. A topic deleted and created again under the same name is read from its start again,
    and its letters' ids (``topic/partition/offset``) repeat the old ones: give a new topic a new name.
    """

    def __init__(self, conn: KafkaConnection, dlq_topic: str, timeout_s: float) -> None:
        self.conn, self.topic, self.timeout_s = conn, dlq_topic, timeout_s
        self.ends: dict[int, int] = {}  # partition -> offset the next read starts from

    def read_new(self) -> list[Letter]:
        starts = {p: self.ends.get(p, 0) for p in list_partitions(self.conn, self.topic)}
        msgs, ends = read_to_end(self.conn, self.topic, starts, self.timeout_s)
        self.ends.update(ends)
        msgs.sort(key=lambda m: (m.partition() or 0, m.offset() or 0))
        return [Letter.from_message(m) for m in msgs]


def read_ledger(conn: KafkaConnection, dlq_topic: str, timeout_s: float) -> set[str]:
    """The ids of the letters of ``dlq_topic`` redriven so far (none when it has no ledger yet)."""
    try:
        ledger = read_all(conn, ledger_topic(dlq_topic), timeout_s)
    except TopicsMissing:
        return set()
    return {key.decode() for m in ledger if (key := m.key())}


class RedriveFenced(RuntimeError):
    """Another redrive of the same dead-letter topic started: this one stopped (what it had not committed was not sent)."""


_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


class Redriver:
    """Redrives of one dead-letter topic through one transactional producer.

    The producer's ``transactional.id`` is fixed per topic, and it is initialised, which fences any other
    redriver of the topic and aborts its open transaction, *before* the ledger is read. So a redriver that
    read the ledger before another one started can no longer commit: two redrives at once cannot send a
    letter twice. A fenced redriver raises :class:`RedriveFenced`.

    The ledger topic is created on first use: compacted (its key is the letter, so compaction keeps one
    entry per letter, and no retention can drop it) and, on a real cluster, with the cluster's default
    replication.
    """

    def __init__(self, conn: KafkaConnection, dlq_topic: str, timeout_s: float) -> None:
        self.conn, self.dlq_topic, self.ledger, self.timeout_s = conn, dlq_topic, ledger_topic(dlq_topic), timeout_s
        create_topics(conn, {self.ledger: 1}, replication_factor=-1, config={"cleanup.policy": "compact"})
        config = {"transactional.id": f"sluice-redrive-{dlq_topic}", "linger.ms": 5, "logger": log}
        self._producer = Producer(conn.producer_config(**config))
        with self._fenced_is_one_line():
            self._producer.init_transactions(timeout_s)

    def redriven(self) -> set[str]:
        """The letters redriven so far (read after this redriver fenced every earlier one)."""
        return read_ledger(self.conn, self.dlq_topic, self.timeout_s)

    def send(self, sends: Sequence[tuple[Letter, str]]) -> int:
        """Produce each letter's original key and value to its target, with its ledger record, in transactions
        of at most :data:`CHUNK` letters or :data:`CHUNK_BYTES`. Returns how many were sent; raises when a
        transaction fails (it is aborted: none of its letters count as sent)."""
        require_topics(self.conn, {target for _, target in sends})
        done = 0
        for chunk in _chunks(sends):
            with self._fenced_is_one_line():
                self._send(chunk)
            done += len(chunk)
        return done

    def _send(self, chunk: Sequence[tuple[Letter, str]]) -> None:
        producer = self._producer
        producer.begin_transaction()
        try:
            at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for letter, target in chunk:
                headers: list[tuple[str, str | bytes | None]] = [
                    *letter.trace,
                    (REDRIVE_OF, letter.origin.encode()),
                    (REDRIVE_FROM, letter.id.encode()),
                    (REDRIVE_ATTEMPT, b"%d" % (letter.attempt + 1)),
                ]
                producer.produce(target, key=letter.key, value=letter.value, headers=headers)
                entry = {"to": target, "of": letter.origin, "step": letter.step, "reason": letter.reason, "at": at}
                producer.produce(self.ledger, key=letter.id.encode(), value=orjson.dumps(entry))
                producer.poll(0)
            # no delivery callbacks: a record that cannot be delivered makes the commit fail (librdkafka puts the
            # transaction in an abortable state), and a callback run after a fatal error (fenced) raises
            # SystemError inside confluent-kafka instead of the fencing error
            producer.commit_transaction(self.timeout_s)
        except BaseException:
            with contextlib.suppress(KafkaException):  # fenced or the broker gone: the original error tells more
                producer.abort_transaction(self.timeout_s)
            raise

    @contextlib.contextmanager
    def _fenced_is_one_line(self) -> Iterator[None]:
        try:
            yield
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() in _FENCED:
                raise RedriveFenced(
                    f"another redrive of {self.dlq_topic} started (transactional.id sluice-redrive-{self.dlq_topic}); "
                    "this one stopped, and what it had not committed was not sent"
                ) from None
            raise


def _chunks(sends: Sequence[tuple[Letter, str]]) -> Iterator[Sequence[tuple[Letter, str]]]:
    """``sends`` cut into transactions of at most :data:`CHUNK` letters and about :data:`CHUNK_BYTES`.

    >>> big = Letter("d/0/1", "r", "s", "", "t", None, b"x" * (CHUNK_BYTES // 2), 0, False)
    >>> [len(c) for c in _chunks([(big, "t")] * 5)]
    [2, 2, 1]
    """
    start, size = 0, 0
    for i, (letter, _) in enumerate(sends):
        n = len(letter.value or b"") + len(letter.key or b"")
        if i > start and (i - start >= CHUNK or size + n > CHUNK_BYTES):
            yield sends[start:i]
            start, size = i, 0
        size += n
    if start < len(sends):
        yield sends[start:]


# --- the command ------------------------------------------------------------------------------------------------------


def _topic(args: argparse.Namespace) -> str:
    return str(args.topic or FLOWS[args.flow][1].from_env().dlq_topic)


def _selection(args: argparse.Namespace) -> Selection:
    return Selection(args.reason, args.step, args.source_topic)


def _when(ms: int) -> str:
    """A record timestamp as UTC time.

    >>> _when(86_400_000), _when(0)
    ('1970-01-02 00:00:00', '?')
    """
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) if ms > 0 else "?"


def _summary_lines(topic: str, groups: list[Group]) -> Iterator[str]:
    total, redriven = sum(g.count for g in groups), sum(g.redriven for g in groups)
    if not total:
        yield f"{topic}: no dead letters"
        return
    first, last = min(g.first_ms for g in groups), max(g.last_ms for g in groups)
    yield f"{topic}: {total} dead letters, {redriven} redriven, {_when(first)} to {_when(last)} UTC"
    yield f"{'count':>7} {'redriven':>8}  {'step':<12} {'reason':<34} {'from':<20} example"
    for g in groups:
        sources = ",".join(t for t, _ in g.source_topics.most_common(2)) + ("…" if len(g.source_topics) > 2 else "")
        example = g.example if len(g.example) <= 70 else g.example[:69] + "…"
        yield f"{g.count:>7} {g.redriven:>8}  {g.step:<12} {g.reason_class:<34} {sources:<20} {example}"


def cmd_summary(args: argparse.Namespace, conn: KafkaConnection) -> int:
    topic = _topic(args)
    letters, done = read_letters(conn, topic, args.timeout), read_ledger(conn, topic, args.timeout)
    groups = summarize(letters, done)
    if args.json:
        for g in groups:
            row = {**vars(g), "source_topics": dict(g.source_topics)}
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
    else:
        print("\n".join(_summary_lines(topic, groups)))
    return 0


def cmd_list(args: argparse.Namespace, conn: KafkaConnection) -> int:
    topic, selection = _topic(args), _selection(args)
    done = read_ledger(conn, topic, args.timeout)
    chosen = [letter for letter in read_letters(conn, topic, args.timeout) if selection.matches(letter)]
    for letter in chosen[-args.last :] if args.last else chosen:
        sys.stdout.write(orjson.dumps(letter.as_json(letter.id in done)).decode() + "\n")
    return 0


def refusal(args: argparse.Namespace) -> str:
    """Why ``redrive``'s options cannot run as given ('' when they can).

    >>> ns = lambda **kw: argparse.Namespace(**{"reason": "", "step": "", "source_topic": "", "all": False,
    ...     "every": 0.0, "again": False, "dry_run": False, "stop_after": 0.0} | kw)
    >>> refusal(ns(all=True)), refusal(ns(every=5, again=True, reason="x"))
    ('', '--again with --every would send the same letters every cycle, for ever')
    >>> refusal(ns()), refusal(ns(all=True, stop_after=9))
    ('say which letters: --reason TEXT, --step STEP, --source-topic T, or --all', '--stop-after needs --every')
    """
    if not (_selection(args).chosen or args.all):
        return "say which letters: --reason TEXT, --step STEP, --source-topic T, or --all"
    if args.every and args.again:
        return "--again with --every would send the same letters every cycle, for ever"
    if args.every and args.dry_run:
        return "--dry-run reports what one cycle would send: leave out --every"
    if args.stop_after and not args.every:
        return "--stop-after needs --every"
    return ""


def cmd_redrive(args: argparse.Namespace, conn: KafkaConnection) -> int:
    why = refusal(args)
    if why:
        print(f"sluice dlq redrive: {why}", file=sys.stderr)
        return 2
    topic, selection = _topic(args), _selection(args)
    max_attempts = (
        args.max_attempts if args.max_attempts is not None else (DEFAULT_MAX_ATTEMPTS if args.every else None)
    )
    stop_at = time.monotonic() + args.stop_after if args.stop_after else math.inf
    left: int | None = args.limit  # --limit counts over every cycle of a retrier
    redriver = None if args.dry_run else Redriver(conn, topic, args.timeout)
    tail = LetterTail(conn, topic, args.timeout)
    done: set[str] | None = None
    with _stop_requested() as stop:
        cycle = sent = 0
        while True:
            letters = tail.read_new()
            if done is None:  # the ledger once, after the letters (a dry run's redrive done meanwhile is not
                # reported as to do) and after the redriver fenced every earlier one: from then on only its
                # own sends add to it
                done = redriver.redriven() if redriver is not None else read_ledger(conn, topic, args.timeout)
            chosen = plan(letters, selection, done, args.to, left, args.again, max_attempts)
            if redriver is not None and chosen.send:
                sent += redriver.send(chosen.send)
                done.update(letter.id for letter, _ in chosen.send)
            if left is not None:
                left -= len(chosen.send)
            stamp = time.strftime("%H:%M:%S ") if args.every else ""
            if cycle == 0 or chosen.send:  # a retrier says what it did, not that it found nothing again
                lines = chosen.describe(sent=redriver is not None)
                print("\n".join(f"{stamp}{topic}: {line}" for line in lines), flush=True)
            cycle += 1
            if not args.every or (left is not None and left <= 0) or time.monotonic() + args.every >= stop_at:
                break
            if stop.wait(args.every):
                print(f"{stamp}{topic}: stopped after {cycle} cycles, {sent} dead letters redriven", flush=True)
                break
    return 0


@contextlib.contextmanager
def _stop_requested() -> Iterator[threading.Event]:
    """An event set by Ctrl-C or SIGTERM while the block runs: a retrier finishes its cycle (a transaction is
    committed or aborted, never cut) and exits 0. Outside the main thread (a test calling the command in a
    thread) the signals keep their handlers."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(args: argparse.Namespace) -> int:
    from sluice.settings import FlowSettings

    settings = FlowSettings.from_env()
    command = {"summary": cmd_summary, "list": cmd_list, "redrive": cmd_redrive}[args.dlq_command]
    return command(args, settings.connection())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``summary``, ``list`` and ``redrive`` under ``parser`` (``sluice dlq ...``)."""
    sub = parser.add_subparsers(dest="dlq_command", required=True, metavar="{summary,list,redrive}")

    def common(p: argparse.ArgumentParser, selecting: bool) -> None:
        p.add_argument("--flow", choices=FLOWS, default="fraud", help="whose dead letters (default: fraud)")
        p.add_argument("--topic", default="", help="the dead-letter topic (default: the flow's SLUICE_DLQ_TOPIC)")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds to read a topic to its end")
        if selecting:
            p.add_argument("--reason", default="", help="letters whose reason contains TEXT (any case)")
            p.add_argument(
                "--step",
                default="",
                help="letters rejected by this step (its id, fraud.parse, or its last part, parse)",
            )
            p.add_argument("--source-topic", default="", help="letters read from this topic")
        p.set_defaults(fn=run, needs_broker=True)

    p = sub.add_parser("summary", help="dead letters by step and reason: counts, sources, redriven, an example")
    p.add_argument("--json", action="store_true", help="one JSON object per group")
    common(p, selecting=False)
    p = sub.add_parser("list", help="the selected dead letters, one JSON object per line")
    p.add_argument("--last", type=COUNT, default=0, help="only the last N of them (default: all)")
    common(p, selecting=True)
    p = sub.add_parser("redrive", help="send selected dead letters back to their source topic, each at most once")
    common(p, selecting=True)
    p.add_argument("--all", action="store_true", help="every letter not redriven yet")
    p.add_argument("--to", default="", help="send to this topic instead of each letter's source topic")
    p.add_argument("--limit", type=AT_LEAST_ONE, default=None, help="at most N letters (with --every: over all cycles)")
    p.add_argument("--again", action="store_true", help="also letters redriven before")
    p.add_argument(
        "--every", type=POSITIVE, default=0.0, metavar="SECONDS",
        help="keep going: redrive what is new every SECONDS (a retrier for transient causes), until Ctrl-C",
    )  # fmt: skip
    p.add_argument(
        "--max-attempts", type=AT_LEAST_ONE, default=None,
        help=f"leave an input that failed again after N redrives (default: {DEFAULT_MAX_ATTEMPTS} with --every, else no limit)",
    )  # fmt: skip
    p.add_argument(
        "--stop-after", type=POSITIVE, default=0.0, metavar="SECONDS", help="with --every: stop after this long"
    )
    p.add_argument("--dry-run", action="store_true", help="report what would be sent; send nothing")
