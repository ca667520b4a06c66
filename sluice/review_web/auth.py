"""Reviewers, their hashed passwords, signed session cookies, CSRF tokens and sign-in throttling.

* Passwords are stored as ``scrypt$N$r$p$salt$hash`` (``hashlib.scrypt``, a
  memory-hard KDF from the standard library; N=2**14, r=8: about 50 ms and 16 MB
  per check), never in clear, in a JSON credentials file that ``sluice review
  add-reviewer`` writes with mode 0600.
* A session is a cookie holding ``{reviewer id, CSRF token, expiry}`` signed with
  HMAC-SHA256 under ``SLUICE_REVIEW_SESSION_SECRET``; a changed byte invalidates
  it. The role is *not* in the cookie: every request looks the reviewer up in the
  credentials, so removing a reviewer or changing a role takes effect at once.
* Every form carries the session's CSRF token and every POST compares it in
  constant time; the sign-in form gets a token of its own anonymous session.
* Unknown reviewer ids cost the same scrypt check as known ones (no timing
  oracle for valid ids), and five failures in five minutes lock an id for a minute.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_SCRYPT_MAXMEM = 64 * 2**20
REVIEWER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
ROLE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MIN_PASSWORD_CHARS = 10


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, salt: bytes | None = None) -> str:
    """A storable scrypt hash of ``password`` (a fresh random salt unless one is given).

    >>> stored = hash_password("correct horse battery", salt=b"0" * 16)
    >>> stored.split("$")[:4], check_password("correct horse battery", stored), check_password("wrong", stored)
    (['scrypt', '16384', '8', '1'], True, False)
    """
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=_SCRYPT_MAXMEM)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time comparison; False for a malformed hash)."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), maxmem=_SCRYPT_MAXMEM)
    except ValueError:
        return False
    return hmac.compare_digest(got, _unb64(digest))


_DECOY = hash_password("no reviewer has this password", salt=b"sluice-decoy-slt")


@dataclass(frozen=True, slots=True)
class Reviewer:
    """A person who may sign in: id, role (one of the policy's roles) and password hash."""

    id: str
    role: str
    name: str
    password_hash: str


class CredentialsError(ValueError):
    """The credentials file is missing, unreadable or malformed (the message names the file)."""


class Reviewers:
    """The reviewers the app knows, by id."""

    def __init__(self, reviewers: Iterable[Reviewer] = ()) -> None:
        self.by_id = {r.id: r for r in reviewers}

    def __len__(self) -> int:
        return len(self.by_id)

    def get(self, reviewer_id: str | None) -> Reviewer | None:
        return self.by_id.get(reviewer_id) if reviewer_id else None

    def authenticate(self, reviewer_id: str, password: str) -> Reviewer | None:
        """The reviewer when the password matches (an unknown id costs the same check)."""
        found = self.by_id.get(reviewer_id)
        ok = check_password(password, found.password_hash if found else _DECOY)
        return found if ok and found is not None else None

    def add(self, reviewer_id: str, role: str, password: str, name: str = "") -> Reviewer:
        if not REVIEWER_ID.fullmatch(reviewer_id):
            raise ValueError("a reviewer id is 1-64 letters, digits or _ . : -")
        if not ROLE.fullmatch(role):
            raise ValueError("a role is a lowercase name (letters, digits, _ or -)")
        if len(password) < MIN_PASSWORD_CHARS:
            raise ValueError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
        reviewer = Reviewer(reviewer_id, role, name or reviewer_id, hash_password(password))
        self.by_id[reviewer_id] = reviewer
        return reviewer

    @classmethod
    def load(cls, path: Path) -> Reviewers:
        """Read a credentials file: ``{"reviewers": [{"id", "role", "name", "password": "scrypt$..."}]}``."""
        try:
            data = json.loads(path.read_text())
            rows = data["reviewers"]
            out = []
            for i, row in enumerate(rows):
                rid, role, stored = row["id"], row["role"], row["password"]
                if not (REVIEWER_ID.fullmatch(rid) and ROLE.fullmatch(role) and stored.startswith("scrypt$")):
                    raise CredentialsError(f"{path}: reviewers[{i}] has a bad id, role or password hash")
                out.append(Reviewer(rid, role, str(row.get("name") or rid), stored))
        except OSError as exc:
            raise CredentialsError(f"{path}: cannot read it ({exc.strerror})") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if isinstance(exc, CredentialsError):
                raise
            raise CredentialsError(f"{path}: not a credentials file ({type(exc).__name__}: {exc})") from None
        return cls(out)

    def save(self, path: Path) -> None:
        """Write the credentials file (hashes only), readable by its owner alone."""
        rows = [{"id": r.id, "role": r.role, "name": r.name, "password": r.password_hash} for r in self.by_id.values()]
        tmp = path.with_suffix(path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"reviewers": rows}, f, indent=1)
        os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class Session:
    """What a session cookie says: who (None before sign-in), the CSRF token, and until when."""

    reviewer: str | None
    csrf: str
    expires: float


class SessionCodec:
    """Signs and reads session cookies (see the module docstring).

    >>> codec = SessionCodec(b"s" * 32, lifetime_s=60)
    >>> cookie = codec.issue("ann", now=1000.0)
    >>> codec.read(cookie, now=1001.0).reviewer, codec.read(cookie, now=2000.0)
    ('ann', None)
    >>> codec.read(cookie[:-2] + ("A" if cookie[-2] != "A" else "B") + cookie[-1], now=1001.0) is None
    True
    """

    def __init__(self, secret: bytes, lifetime_s: float) -> None:
        self._secret = secret
        self.lifetime_s = lifetime_s

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, b"sluice-review-session/1|" + payload.encode(), hashlib.sha256).digest())

    def issue(self, reviewer: str | None, now: float | None = None) -> str:
        """A new cookie value (with a fresh CSRF token) for ``reviewer``."""
        expires = (time.time() if now is None else now) + self.lifetime_s
        payload = _b64(orjson.dumps({"sub": reviewer, "csrf": secrets.token_urlsafe(24), "exp": expires}))
        return f"{payload}.{self._sign(payload)}"

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session a cookie holds, or None if it is absent, forged, altered or expired."""
        if not cookie or "." not in cookie:
            return None
        payload, signature = cookie.rsplit(".", 1)
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        try:
            data = orjson.loads(_unb64(payload))
            session = Session(data["sub"], str(data["csrf"]), float(data["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > (time.time() if now is None else now) else None


def csrf_ok(session: Session | None, token: object) -> bool:
    """The form's token is the session's (constant time)."""
    return session is not None and isinstance(token, str) and hmac.compare_digest(session.csrf, token)


class SignInThrottle:
    """Locks a reviewer id for ``lock_s`` after ``limit`` failed sign-ins within ``window_s``.

    :meth:`begin` reserves an attempt, counted as a failure until :meth:`succeeded`
    clears it: checking first and counting after the password check would let
    parallel guesses all pass the check before any failure is recorded. At most
    ``max_ids`` ids are remembered (the stalest go first), so guessing random ids
    cannot grow it without bound.

    >>> t = SignInThrottle(limit=2, window_s=60, lock_s=30)
    >>> t.begin("ann", now=0), t.begin("ann", now=1), t.begin("ann", now=2), t.begin("ann", now=40)
    (True, True, False, True)
    >>> t.succeeded("ann"); t.begin("ann", now=41)
    True
    """

    def __init__(self, limit: int = 5, window_s: float = 300.0, lock_s: float = 60.0, max_ids: int = 10_000) -> None:
        self.limit, self.window_s, self.lock_s, self.max_ids = limit, window_s, lock_s, max_ids
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def begin(self, reviewer_id: str, now: float | None = None) -> bool:
        """Reserve a sign-in attempt for ``reviewer_id``; False while the id is locked."""
        now = time.time() if now is None else now
        with self._lock:
            recent = [t for t in self._failures.pop(reviewer_id, []) if now - t < self.window_s]
            if len(recent) >= self.limit and now - recent[-1] < self.lock_s:
                self._failures[reviewer_id] = recent
                return False
            self._failures[reviewer_id] = [*recent, now][-self.limit :]  # re-inserted: newest last
            while len(self._failures) > self.max_ids:
                del self._failures[next(iter(self._failures))]  # the id whose last attempt is oldest
            return True

    def succeeded(self, reviewer_id: str) -> None:
        with self._lock:
            self._failures.pop(reviewer_id, None)
