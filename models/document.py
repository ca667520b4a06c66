"""Knowledge documents as they travel on the ``documents`` topic: upserts and deletes."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from models.wire import InvalidEvent, json_object

MAX_DOCUMENT_CHARS = 1_000_000


@dataclass(frozen=True, slots=True)
class DocumentEvent:
    """An upsert (``text`` set) or a delete (``deleted``) of one document version."""

    doc_id: str
    version: int
    title: str = ""
    text: str = ""
    source: str = ""
    deleted: bool = False

    def to_json(self) -> bytes:
        body: dict[str, object] = {"id": self.doc_id, "version": self.version}
        if self.deleted:
            body["op"] = "delete"
        else:
            body.update(op="upsert", title=self.title, text=self.text, source=self.source)
        return orjson.dumps(body)


def parse_document_event(raw: bytes | None) -> DocumentEvent:
    """Decode and validate a document event; :class:`InvalidEvent` says what is wrong.

    >>> parse_document_event(b'{"op": "delete", "id": "a", "version": 2}').deleted
    True
    >>> parse_document_event(b'{"op": "upsert", "id": "a", "version": 1}')
    Traceback (most recent call last):
    ...
    models.wire.InvalidEvent: upsert without text
    """
    body = json_object(raw)
    doc_id, version, kind = body.get("id"), body.get("version", 0), body.get("op", "upsert")
    if not isinstance(doc_id, str) or not doc_id or len(doc_id) > 256:
        raise InvalidEvent("id must be a non-empty string of at most 256 characters")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise InvalidEvent("version must be a non-negative integer")
    if kind == "delete":
        return DocumentEvent(doc_id, version, deleted=True)
    if kind != "upsert":
        raise InvalidEvent(f"op must be upsert or delete, not {kind!r}")
    text, title, source = body.get("text"), body.get("title", ""), body.get("source", "")
    if not isinstance(text, str) or not text.strip():
        raise InvalidEvent("upsert without text")
    if len(text) > MAX_DOCUMENT_CHARS:
        raise InvalidEvent(f"text longer than {MAX_DOCUMENT_CHARS} characters")
    if not isinstance(title, str) or not isinstance(source, str):
        raise InvalidEvent("title and source must be strings")
    return DocumentEvent(doc_id, version, title[:512], text, source[:512])
