"""Chat turns as they travel on the ``chat-requests`` topic."""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from models.wire import InvalidEvent, epoch_ms, json_object


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One user turn: who, which turn, what they said, and when they sent it (ms since the epoch)."""

    session_id: str
    turn_id: str
    text: str
    sent_at_ms: float

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"session_id": self.session_id, "turn_id": self.turn_id, "text": self.text, "time": self.sent_at_ms}
        )


def parse_chat_request(raw: bytes | None, max_chars: int = 2000) -> ChatRequest:
    """Decode and bound a chat request; :class:`InvalidEvent` says what is wrong.

    >>> parse_chat_request(b'{"session_id": "s1", "turn_id": 3, "text": "hi", "time": 1767225600000}')
    ChatRequest(session_id='s1', turn_id='3', text='hi', sent_at_ms=1767225600000.0)
    >>> parse_chat_request(b'{"session_id": "s1", "turn_id": 1, "text": "xxxx"}', max_chars=3)
    Traceback (most recent call last):
    ...
    models.wire.InvalidEvent: text longer than 3 characters (4)
    """
    # a bound on the bytes before decoding: 12 per character is an emoji as JSON escapes it (\ud83d\ude00)
    if raw is not None and len(raw) > 12 * max_chars + 1024:
        raise InvalidEvent(f"message of {len(raw)} bytes is over the size limit")
    body = json_object(raw)
    session, turn, text = body.get("session_id"), body.get("turn_id"), body.get("text")
    if not isinstance(session, str) or not session or len(session) > 128:
        raise InvalidEvent("session_id must be a non-empty string of at most 128 characters")
    if not isinstance(turn, int | str) or isinstance(turn, bool) or len(str(turn)) > 64:
        raise InvalidEvent("turn_id must be an integer or a short string")
    if not isinstance(text, str) or not text.strip():
        raise InvalidEvent("text must be a non-empty string")
    if len(text) > max_chars:
        raise InvalidEvent(f"text longer than {max_chars} characters ({len(text)})")
    sent = epoch_ms(body.get("time", time.time() * 1000.0), "time")
    return ChatRequest(session, str(turn), text.strip(), sent)


def reply_address(raw: bytes | None) -> tuple[str, str] | None:
    """``(session_id, turn_id)`` of a request that failed validation, when they can be read: so the user
    still gets an error reply (a dead letter alone leaves them waiting).

    >>> reply_address(b'{"session_id": "s1", "turn_id": 4, "text": 3}')
    ('s1', '4')
    >>> reply_address(b"not json") is None
    True
    """
    try:
        body = json_object(raw)
    except InvalidEvent:
        return None
    session, turn = body.get("session_id"), body.get("turn_id")
    if not isinstance(session, str) or not session or len(session) > 128:
        return None
    if not isinstance(turn, int | str) or isinstance(turn, bool) or len(str(turn)) > 64:
        return None
    return session, str(turn)


@dataclass(frozen=True, slots=True)
class AnswerNote:
    """An answer the assistant gave, read back from its responses topic into the session's memory."""

    session_id: str
    turn_id: str
    text: str


def parse_answer_note(raw: bytes | None) -> AnswerNote:
    """The session, turn and answer text of a ``chat-responses`` record.

    >>> parse_answer_note(b'{"session_id": "s", "turn_id": "1", "route": "knowledge", "answer": "It calls x. [1]"}')
    AnswerNote(session_id='s', turn_id='1', text='It calls x. [1]')
    """
    body = json_object(raw)
    session, turn, answer = body.get("session_id"), body.get("turn_id"), body.get("answer")
    if not isinstance(session, str) or not isinstance(turn, str) or not isinstance(answer, str):
        raise InvalidEvent("not an answer record")
    return AnswerNote(session, turn, answer[:2000])
