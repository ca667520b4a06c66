"""The card-transaction event: its wire format (JSON) and its validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from models.wire import InvalidEvent, json_object
from state.tuple_pickle import tuple_pickled

MIN_AMOUNT = 0.01  # a cent: smaller (denormal, 5e-324) amounts are not payments and break log-scale features
MAX_AMOUNT = 1_000_000.0
# 2000-01-01 .. 2100-01-01 in epoch milliseconds
MIN_EVENT_TIME_MS = 946_684_800_000
MAX_EVENT_TIME_MS = 4_102_444_800_000


# not frozen: a frozen dataclass sets each field through object.__setattr__ (5x the __init__ cost), and
# this is made for every event; treat it as immutable
@tuple_pickled  # crosses processes at keyed steps
@dataclass(slots=True)
class Transaction:
    """A validated card transaction."""

    event_id: str
    card_id: str
    amount: float
    currency: str
    merchant_id: str
    merchant_category: str
    country: str
    event_time_ms: int
    sent_at_ms: float
    merchant_name: str | None = None  # free text from the merchant: data for people, never instructions

    @property
    def event_time_s(self) -> float:
        return self.event_time_ms / 1000.0

    def to_json(self, sent_at_ms: float | None = None) -> bytes:
        """The wire format; ``sent_at_ms`` overrides the send time (what a producer stamps).

        >>> parse_transaction(Transaction("e", "c", 1.0, "USD", "m", "grocery", "US", 1_700_000_000_000, 0.0)
        ...     .to_json(sent_at_ms=5.0)).sent_at_ms
        5.0
        """
        body = {
            "event_id": self.event_id,
            "card_id": self.card_id,
            "amount": self.amount,
            "currency": self.currency,
            "merchant_id": self.merchant_id,
            "merchant_category": self.merchant_category,
            "country": self.country,
            "event_time": self.event_time_ms,
            "sent_at": self.sent_at_ms if sent_at_ms is None else sent_at_ms,
        }
        if self.merchant_name is not None:  # before sent_at: a sender stamps the time last
            body = {"merchant_name": self.merchant_name} | body
        return orjson.dumps(body)


def _text(obj: dict[str, Any], name: str, max_len: int = 64) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"field '{name}' must be a non-empty string")
    if len(value) > max_len:
        raise InvalidEvent(f"field '{name}' is longer than {max_len} characters")
    return value


def _optional_text(obj: dict[str, Any], name: str, max_len: int) -> str | None:
    return None if obj.get(name) is None else _text(obj, name, max_len)


def parse_transaction(raw: bytes | None) -> Transaction:
    """Decode and validate one transaction; raises :class:`InvalidEvent` with the reason.

    >>> parse_transaction(b'{"event_id":"e1","card_id":"c1","amount":12.5,"currency":"EUR",'
    ...     b'"merchant_id":"m1","merchant_category":"grocery","country":"FR",'
    ...     b'"event_time":1700000000000,"sent_at":1700000000000.5}').amount
    12.5

    A well-formed event is checked in one expression (about a third of the field-by-field checks'
    cost: this runs for every event); anything else goes through :func:`checked_transaction`, which
    accepts exactly the same events and says what is wrong with the others.
    """
    obj = json_object(raw)
    get = obj.get
    event_id, card_id, amount, currency = get("event_id"), get("card_id"), get("amount"), get("currency")
    merchant_id, category, country = get("merchant_id"), get("merchant_category"), get("country")
    event_time, sent_at, name = get("event_time"), get("sent_at", 0.0), get("merchant_name")
    if (
        type(event_id) is str and 0 < len(event_id) <= 128
        and type(card_id) is str and 0 < len(card_id) <= 64
        and (type(amount) is float or type(amount) is int) and MIN_AMOUNT <= amount <= MAX_AMOUNT
        and type(currency) is str and len(currency) == 3
        and type(merchant_id) is str and 0 < len(merchant_id) <= 64
        and type(category) is str and 0 < len(category) <= 64
        and type(country) is str and len(country) == 2
        and type(event_time) is int and MIN_EVENT_TIME_MS <= event_time <= MAX_EVENT_TIME_MS
        and (type(sent_at) is float or type(sent_at) is int) and 0 <= sent_at <= MAX_EVENT_TIME_MS
        and (name is None or (type(name) is str and 0 < len(name) <= 128))
    ):  # fmt: skip
        return Transaction(
            event_id, card_id, float(amount), currency, merchant_id, category, country, event_time, float(sent_at), name
        )
    return checked_transaction(obj)


def checked_transaction(obj: dict[str, Any]) -> Transaction:
    """Validate a decoded transaction field by field; raises :class:`InvalidEvent` naming the first problem."""
    amount = obj.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise InvalidEvent("field 'amount' must be a number")
    if not MIN_AMOUNT <= amount <= MAX_AMOUNT:  # also refuses nan; checked before float() can overflow
        raise InvalidEvent(f"field 'amount' out of range [{MIN_AMOUNT:g}, {MAX_AMOUNT:g}]")
    currency = _text(obj, "currency", 3)
    country = _text(obj, "country", 2)
    if len(currency) != 3 or len(country) != 2:
        raise InvalidEvent("currency must be 3 letters and country 2 letters")
    event_time = obj.get("event_time")
    if isinstance(event_time, bool) or not isinstance(event_time, int):
        raise InvalidEvent("field 'event_time' must be integer epoch milliseconds")
    if not MIN_EVENT_TIME_MS <= event_time <= MAX_EVENT_TIME_MS:
        raise InvalidEvent("field 'event_time' is outside 2000..2100")
    sent_at = obj.get("sent_at", 0.0)
    if isinstance(sent_at, bool) or not isinstance(sent_at, (int, float)) or not 0 <= sent_at <= MAX_EVENT_TIME_MS:
        raise InvalidEvent("field 'sent_at' must be epoch milliseconds")
    return Transaction(
        event_id=_text(obj, "event_id", 128),
        card_id=_text(obj, "card_id"),
        amount=float(amount),
        currency=currency,
        merchant_id=_text(obj, "merchant_id"),
        merchant_category=_text(obj, "merchant_category"),
        country=country,
        event_time_ms=event_time,
        sent_at_ms=float(sent_at),
        merchant_name=_optional_text(obj, "merchant_name", 128),
    )
