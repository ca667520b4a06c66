"""Card ids out of review records: a keyed-hash token, a masked form for people, numbers redacted from notes.

A token is ``HMAC-SHA256(key, card id)``: stable for one key (the same card gets
the same token in every case, audit record and final decision, so they can be
joined), and without the key nobody can test a guessed card number against it,
which a plain hash of a 16-digit number would allow in seconds. The key comes
from the environment (``SLUICE_REVIEW_TOKEN_KEY``); rotating it starts new tokens.

>>> tok = CardTokenizer(b"k" * 32)
>>> tok.token("4111111111111111") == tok.token("4111111111111111"), tok.token("4111111111111111")[:4]
(True, 'tok_')
>>> CardTokenizer(b"x" * 32).token("4111111111111111") == tok.token("4111111111111111")
False
>>> mask("4111111111111111"), mask("c0000007"), mask("12")
('••••1111', '••••0007', '••••')
>>> redact_numbers("called the holder on 4111 1111 1111 1111, ref 42")
'called the holder on [number removed], ref 42'
"""

from __future__ import annotations

import hashlib
import hmac
import re

TOKEN_PREFIX = "tok_"
MIN_KEY_BYTES = 16
# six or more digits, each pair split by at most three spaces, line breaks, dots, slashes, underscores or
# dashes: card numbers however typed ("4111  1111", "4111 - 1111", "4111/1111"), account and phone numbers
_LONG_NUMBER = re.compile(r"\d(?:[\s./_-]{0,3}\d){5,}")


class CardTokenizer:
    """Keyed-hash tokens for card ids (see the module docstring)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"a token key needs at least {MIN_KEY_BYTES} bytes")
        self._key = key

    def token(self, card_id: str) -> str:
        return TOKEN_PREFIX + hmac.new(self._key, card_id.encode(), hashlib.sha256).hexdigest()[:32]


def mask(card_id: str) -> str:
    """What a reviewer sees of a card: its last four characters (none when it is that short)."""
    return "••••" + (card_id[-4:] if len(card_id) > 4 else "")


def redact_numbers(text: str) -> str:
    """Free text with every run of six or more digits replaced: notes must not carry card numbers.

    >>> [redact_numbers(t) for t in ("4111  1111  1111  1111", "4111 - 1111 - 1111", "4111/1111\\n1111_1111")]
    ['[number removed]', '[number removed]', '[number removed]']
    >>> redact_numbers("refund 120, 80 and 45 EUR")
    'refund 120, 80 and 45 EUR'
    """
    return _LONG_NUMBER.sub("[number removed]", text)
