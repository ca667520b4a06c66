"""The personalization flow's wire formats: catalogue events, interactions and recommendation requests.

Every parser raises :class:`models.wire.InvalidEvent` with a reason a person can
act on; the dataflow turns that into a dead letter. Rule sets have their own
module (:mod:`models.rules`) because they are validated more deeply.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import orjson

from models.wire import InvalidEvent, epoch_ms, json_object

MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 2000
MAX_K = 100
ITEM_TEXT_WORDS = 24  # title + the first description words: short texts keep CPU embedding affordable


class Kind(StrEnum):
    """What a user did with an item; each kind weighs differently in the user's taste."""

    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"


def _id(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise InvalidEvent(f"{name} must be a non-empty string of at most {MAX_ID_CHARS} characters")
    return value


def _text(body: dict[str, Any], name: str, default: str | None = None, max_chars: int = MAX_TEXT_CHARS) -> str:
    value = body.get(name, default)
    if not isinstance(value, str):
        raise InvalidEvent(f"{name} must be a string")
    if len(value) > max_chars:
        raise InvalidEvent(f"{name} longer than {max_chars} characters ({len(value)})")
    return value


def _millis(body: dict[str, Any], name: str, default: float | None = None) -> float:
    value = body.get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise InvalidEvent(f"{name} must be milliseconds since the epoch")
    return float(value)


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """An upsert (``deleted`` False) or a delete of one item version.

    ``embedding`` is set when the producer sent a precomputed vector (the bulk
    path); otherwise the flow embeds :meth:`text`.
    """

    item_id: str
    version: int
    title: str = ""
    description: str = ""
    category: str = ""
    brand: str = ""
    price: float = 0.0
    in_stock: bool = True
    deleted: bool = False
    sent_at_ms: float = 0.0
    embedding: tuple[float, ...] | None = None

    @property
    def searchable(self) -> bool:
        """Whether the item may appear in results (a delete or ``in_stock=false`` takes it out)."""
        return not self.deleted and self.in_stock

    def text(self, max_words: int = ITEM_TEXT_WORDS) -> str:
        """What the encoder embeds: the title, then description words up to ``max_words`` in all.

        >>> CatalogItem("i1", 1, "Velora trail shoe", "light waterproof mesh upper for wet trails").text(6)
        'Velora trail shoe light waterproof mesh'
        """
        words = self.title.split()
        words += self.description.split()[: max(0, max_words - len(words))]
        return " ".join(words[:max_words])

    def to_json(self, sent_at_ms: float | None = None) -> bytes:
        body: dict[str, Any] = {"id": self.item_id, "version": self.version}
        if self.deleted:
            body["op"] = "delete"
        else:
            body.update(
                op="upsert",
                title=self.title,
                description=self.description,
                category=self.category,
                brand=self.brand,
                price=self.price,
                in_stock=self.in_stock,
            )
            if self.embedding is not None:
                body["embedding"] = list(self.embedding)
        if sent_at_ms is not None:
            body["sent_at"] = sent_at_ms
        return orjson.dumps(body)


def parse_catalog_event(raw: bytes | None, dim: int = 384) -> CatalogItem:
    """Decode and validate a catalogue event; :class:`InvalidEvent` says what is wrong.

    >>> parse_catalog_event(b'{"op": "delete", "id": "i1", "version": 3}').deleted
    True
    >>> parse_catalog_event(b'{"id": "i1", "version": 1, "title": "t", "category": "c", "price": -1}')
    Traceback (most recent call last):
    ...
    models.wire.InvalidEvent: price must be a number from 0 to 1e+07
    >>> parse_catalog_event(b'{"id": "i1", "version": 1, "title": "t", "category": "c", "embedding": [1, 0]}', dim=3)
    Traceback (most recent call last):
    ...
    models.wire.InvalidEvent: embedding has 2 dimensions, expected 3
    """
    body = json_object(raw)
    item_id = _id(body, "id")
    version = body.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise InvalidEvent("version must be a non-negative integer")
    sent = _millis(body, "sent_at", 0.0)
    op = body.get("op", "upsert")
    if op == "delete":
        return CatalogItem(item_id, version, deleted=True, sent_at_ms=sent)
    if op != "upsert":
        raise InvalidEvent(f"op must be upsert or delete, not {op!r}")
    title = _text(body, "title", max_chars=512).strip()
    if not title:
        raise InvalidEvent("upsert without a title")
    category = _text(body, "category", max_chars=MAX_ID_CHARS).strip()
    if not category:
        raise InvalidEvent("upsert without a category")
    price = body.get("price", 0.0)
    if not isinstance(price, int | float) or isinstance(price, bool) or not 0 <= price <= 1e7:
        raise InvalidEvent("price must be a number from 0 to 1e+07")
    in_stock = body.get("in_stock", True)
    if not isinstance(in_stock, bool):
        raise InvalidEvent("in_stock must be true or false")
    return CatalogItem(
        item_id,
        version,
        title,
        _text(body, "description", ""),
        category,
        _text(body, "brand", "", max_chars=MAX_ID_CHARS),
        float(price),
        in_stock,
        sent_at_ms=sent,
        embedding=_embedding(body.get("embedding"), dim),
    )


def _embedding(value: object, dim: int) -> tuple[float, ...] | None:
    """A precomputed item vector, checked (``dim`` finite numbers, not all zero) and scaled to unit length here.

    Scaled in float64, by its largest component first: the flow keeps float32 vectors, where
    1e39 overflows to inf and 1e-46 underflows to 0, and either would normalise to NaN,
    which then spreads to every user who interacts with the item and never decays away.

    >>> [round(x, 6) for x in _embedding([1e39, 0, 0], 3)], [round(x, 6) for x in _embedding([1e-46, 1e-46], 2)]
    ([1.0, 0.0, 0.0], [0.707107, 0.707107])
    """
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        raise InvalidEvent("embedding must be a list of numbers")
    if len(value) != dim:
        raise InvalidEvent(f"embedding has {len(value)} dimensions, expected {dim}")
    vec = np.asarray(value, dtype=np.float64)
    if not np.isfinite(vec).all() or not vec.any():
        raise InvalidEvent("embedding must be finite and not all zero")
    vec /= np.abs(vec).max()
    vec /= np.linalg.norm(vec)
    return tuple(float(x) for x in vec)


@dataclass(frozen=True, slots=True)
class Interaction:
    """One user action on one item at an event time (ms since the epoch)."""

    user_id: str
    item_id: str
    kind: Kind
    event_time_ms: float

    def to_json(self, sent_at_ms: float | None = None) -> bytes:
        body: dict[str, Any] = {
            "user_id": self.user_id,
            "item_id": self.item_id,
            "kind": self.kind.value,
            "time": self.event_time_ms,
        }
        if sent_at_ms is not None:
            body["sent_at"] = sent_at_ms
        return orjson.dumps(body)


def parse_interaction(raw: bytes | None, latest_ms: float = math.inf) -> Interaction:
    """Decode and validate an interaction; one dated after ``latest_ms`` is refused.

    The flow passes the clock plus ``SLUICE_MAX_EVENT_AHEAD_S`` as ``latest_ms``: decayed
    state keeps its sums at the newest event time, so one event dated years ahead (a
    time sent in microseconds) would decay every count of its user, and of the
    popularity ranking, to nothing.

    >>> parse_interaction(b'{"user_id": "u1", "item_id": "i9", "kind": "click", "time": 1000}')
    Interaction(user_id='u1', item_id='i9', kind=<Kind.CLICK: 'click'>, event_time_ms=1000.0)
    >>> parse_interaction(b'{"user_id": "u1", "item_id": "i9", "kind": "click", "time": 1700000000000000}', 2e12)
    Traceback (most recent call last):
    ...
    models.wire.InvalidEvent: time is 1700000000000000 ms, after the latest accepted 2000000000000 ms (SLUICE_MAX_EVENT_AHEAD_S ahead of the clock)
    >>> parse_interaction(b'{"user_id": "u1", "item_id": "i9", "kind": "like", "time": 1000}')
    Traceback (most recent call last):
    ...
    models.wire.InvalidEvent: kind must be one of view, click, add_to_cart, purchase
    """
    body = json_object(raw)
    user, item = _id(body, "user_id"), _id(body, "item_id")
    try:
        raw_kind = body.get("kind")
        kind = Kind(raw_kind if isinstance(raw_kind, str) else "")
    except ValueError:
        raise InvalidEvent(f"kind must be one of {', '.join(k.value for k in Kind)}") from None
    at_ms = _millis(body, "time")
    if at_ms > latest_ms:
        raise InvalidEvent(
            f"time is {at_ms:.0f} ms, after the latest accepted {latest_ms:.0f} ms "
            "(SLUICE_MAX_EVENT_AHEAD_S ahead of the clock)"
        )
    return Interaction(user, item, kind, at_ms)


@dataclass(frozen=True, slots=True)
class RecommendRequest:
    """Who wants ``k`` items, in which context, sent when (ms since the epoch)."""

    request_id: str
    user_id: str
    k: int
    page: str
    category: str
    device: str
    sent_at_ms: float

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "request_id": self.request_id,
                "user_id": self.user_id,
                "context": {"page": self.page, "category": self.category, "device": self.device},
                "k": self.k,
                "time": self.sent_at_ms,
            }
        )


def parse_recommend_request(raw: bytes | None, max_k: int = MAX_K) -> RecommendRequest:
    """Decode and validate a recommendation request (``context`` is optional, ``k`` 1..``max_k``).

    >>> r = parse_recommend_request(b'{"request_id": "r1", "user_id": "u1", "k": 5, "time": 1767225600000,'
    ...                             b' "context": {"page": "home", "category": "shoes"}}')
    >>> (r.k, r.page, r.category, r.device)
    (5, 'home', 'shoes', '')
    >>> parse_recommend_request(b'{"request_id": "r1", "user_id": "u1", "k": 0, "time": 7}')
    Traceback (most recent call last):
    ...
    models.wire.InvalidEvent: k must be an integer from 1 to 100
    """
    body = json_object(raw)
    request_id, user = _id(body, "request_id"), _id(body, "user_id")
    k = body.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max_k:
        raise InvalidEvent(f"k must be an integer from 1 to {max_k}")
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise InvalidEvent("context must be a JSON object")
    page, category, device = (
        _text(context, name, "", max_chars=MAX_ID_CHARS) for name in ("page", "category", "device")
    )
    return RecommendRequest(request_id, user, k, page, category, device, epoch_ms(body.get("time"), "time"))


def text_digest(text: str, encoder_name: str) -> str:
    """What a stored vector was computed from: the encoder (its name carries its precision) and the text.

    An update whose digest equals the stored one gets the stored vector instead of a new encoder call
    (the encoder is deterministic and batch-independent, so it would compute the same vector); most
    catalogue updates change a price or the stock, not the text.

    >>> text_digest("Velora trail shoe", "all-MiniLM-L6-v2-int8rw") == text_digest("Velora trail shoe", "all-MiniLM-L6-v2")
    False
    >>> len(text_digest("Velora trail shoe", "all-MiniLM-L6-v2"))
    16
    """
    return hashlib.blake2b(f"{encoder_name}\0{text}".encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """An item's hash in the online store: its current vector and what rules and tastes need."""

    version: int
    vector: np.ndarray | None  # None: deleted before it was ever embedded
    category: str
    brand: str
    price: float
    in_stock: bool
    deleted: bool
    text_digest: str = ""  # what the vector was computed from (text_digest); empty: not known (given vectors)

    @property
    def searchable(self) -> bool:
        return self.vector is not None and not self.deleted

    def fields(self) -> dict[str, bytes | str]:
        """The hash written through to Redis (a delete keeps the last vector: past interactions still count)."""
        out: dict[str, bytes | str] = {"deleted": "1" if self.deleted else "0"}
        if not self.deleted:
            assert self.vector is not None
            out.update(
                vector=np.asarray(self.vector, dtype=np.float32).tobytes(),
                category=self.category,
                brand=self.brand,
                price=repr(self.price),
                in_stock="1" if self.in_stock else "0",
            )
            if self.text_digest:
                out["text_digest"] = self.text_digest
        return out


def parse_item_record(fields: dict[bytes, bytes], dim: int) -> ItemRecord:
    """Read an item's hash back; ``ValueError`` says why it cannot be used.

    >>> rec = ItemRecord(2, np.ones(3, dtype=np.float32), "shoes", "x", 9.5, True, False)
    >>> back = parse_item_record({k.encode(): v if isinstance(v, bytes) else v.encode()
    ...                                  for k, v in {**rec.fields(), "version": "2"}.items()}, dim=3)
    >>> back.version, back.category, back.price, back.vector.tolist()
    (2, 'shoes', 9.5, [1.0, 1.0, 1.0])
    >>> parse_item_record({b"version": b"2", b"vector": b"\\0" * 8}, dim=3)
    Traceback (most recent call last):
    ...
    ValueError: item vector has 2 dimensions, expected 3
    """
    raw = fields.get(b"vector", b"")
    vector = None
    if raw:
        vector = np.frombuffer(raw, dtype=np.float32) if len(raw) % 4 == 0 else None
        if vector is None or len(vector) != dim:
            raise ValueError(f"item vector has {len(raw) / 4:g} dimensions, expected {dim}")
        if not np.isfinite(vector).all():
            raise ValueError("item vector is not finite")
    try:
        return ItemRecord(
            int(fields.get(b"version", b"0")),
            vector,
            fields.get(b"category", b"").decode(),
            fields.get(b"brand", b"").decode(),
            float(fields.get(b"price", b"0")),
            fields.get(b"in_stock", b"1") == b"1",
            fields.get(b"deleted", b"0") == b"1",
            fields.get(b"text_digest", b"").decode(),
        )
    except UnicodeDecodeError:
        raise ValueError("item metadata is not UTF-8 text") from None
