"""Online feature store on Redis: profiles as hashes, read in batches.

A profile for entity ``id`` lives in the hash ``<namespace>:<id>``. Reads go
through a small TTL cache and one round trip fetches every missing key of a
batch: a Lua script that runs HGETALL on each of its keys, up to
:data:`READ_CHUNK` keys a call. One command, not one per key: redis-py packs,
sends, parses and calls back each command of a pipeline on its own (measured:
19-20 against 7-7.5 µs of the reader's CPU per key, the profile parsed, 300
keys a batch). So the store needs keys one script may read together (one
Redis, or a primary with its replicas, not Redis Cluster) and a Redis user
allowed to run scripts (:func:`check_redis` says so at start, not a fallback
per batch later). Writes are absolute (HSET of whole values), so replaying
them is idempotent.

Failure handling, and why it is shaped this way (measured under load, see
``perf/reports/faults-*.json``):

* **Per-key errors stay per key.** A key of the wrong type (``WRONGTYPE``) or a
  value that is not UTF-8 makes that one profile :class:`Unreadable`; the other
  keys of the batch are served and the store is not considered down (the read
  script catches each key's error and returns it in that key's place).
* **A slow answer is not an outage.** The socket timeout (default 500 ms, per
  call of up to 500 keys) sits far above a read's round trip under a 10k
  events/s load, so scheduling hiccups on a busy machine do not send healthy
  lookups to the fallback.
* **A failed call loses only its own keys.** The keys of the calls before it
  are served and cached; its keys and those after it are answered "store
  down".
* **The circuit opens on repeated failure, not on one.** Only
  ``failures_to_open`` consecutive failed batches open it; while open, batches
  are answered "store down" at once for ``retry_after_s``, then one batch probes
  Redis again (half-open).
* **"No profile" is cached briefly** (``negative_ttl_s``, 1 s), so cards looked up
  just after a Redis restart or before their profile is loaded recover within a
  second, and nothing is cached from a failed batch.

Binary values (an embedding as raw float32 bytes) are read with ``parse_raw``,
which gets the hash undecoded. Flows that *write* state through to Redis use
:meth:`FeatureStore.put_versioned`: one pipelined round trip per batch, each
write applied only when its version is newer than the one stored (a Lua
compare-and-set), so a replay after a crash never moves a value backwards.
:meth:`FeatureStore.scan` reads a whole namespace page by page (bulk loads).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeAlias, TypeVar

import redis

log = logging.getLogger(__name__)

Profile = dict[str, str]
RawProfile = dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A profile that exists but cannot be read (wrong Redis type, bytes that are not text)."""

    reason: str


V = TypeVar("V")
Lookup: TypeAlias = V | Unreadable | None  # None: no profile


class RedisUnavailable(ConnectionError):
    """Redis did not accept us: not listening, wrong password, wrong URL."""


def _target(client: redis.Redis) -> str:
    where = client.connection_pool.connection_kwargs
    return str(where.get("path") or f"{where.get('host')}:{where.get('port')}")


def check_redis(url: str, timeout_s: float) -> None:
    """Connect, PING and load the read script; raise :class:`RedisUnavailable` with one line saying why (the
    password never shown). A user whose ACL forbids scripts is refused here: every batch's read would fail."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    target = _target(client)
    try:
        client.ping()
        client.script_load(_READ_HASHES)
    except redis.AuthenticationError:
        raise RedisUnavailable(f"Redis at {target} refused the credentials in SLUICE_REDIS_URL") from None
    except redis.exceptions.NoPermissionError:
        raise RedisUnavailable(
            f"Redis at {target} does not let the SLUICE_REDIS_URL user run scripts (profile reads need EVALSHA and "
            "SCRIPT LOAD)"
        ) from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise RedisUnavailable(f"Redis at {target} needs a password: put it in SLUICE_REDIS_URL") from None
        raise RedisUnavailable(f"Redis at {target} answered with an error: {exc}") from None
    except redis.RedisError as exc:
        raise RedisUnavailable(
            f"cannot reach Redis at {target} within {timeout_s:g}s ({type(exc).__name__}); check SLUICE_REDIS_URL"
        ) from None
    finally:
        client.close()


def decode_reply(reply: object, parse: Callable[[Profile], V]) -> Lookup[V]:
    """What one HGETALL reply becomes: None (no hash), the parsed profile, or :class:`Unreadable`."""

    def as_text(raw: RawProfile) -> V:
        try:
            text = {k.decode(): v.decode() for k, v in raw.items()}
        except UnicodeDecodeError:
            raise ValueError("profile holds bytes that are not UTF-8 text") from None
        return parse(text)

    return decode_raw_reply(reply, as_text)


def decode_raw_reply(reply: object, parse_raw: Callable[[RawProfile], V]) -> Lookup[V]:
    """Like :func:`decode_reply`, with the hash handed to ``parse_raw`` as bytes (binary fields)."""
    if isinstance(reply, Exception):
        return Unreadable(str(reply).split("\n")[0][:200])
    if not reply:
        return None
    assert isinstance(reply, dict)
    try:
        return parse_raw(reply)
    except ValueError as exc:
        return Unreadable(str(exc))


# KEYS: the hashes. Each one's HGETALL reply (field, value, ... flat), or its error in its place.
_READ_HASHES = """
local out = {}
for i, key in ipairs(KEYS) do
  local ok, reply = pcall(redis.call, 'HGETALL', key)
  if ok then out[i] = reply else out[i] = redis.error_reply(type(reply) == 'table' and reply.err or tostring(reply)) end
end
return out
"""
READ_CHUNK = 500  # keys per script call: a call holds Redis for ~1 us a key, so no client waits long behind one


def _as_hash(reply: object) -> object:
    """A flat HGETALL reply as the ``{field: value}`` redis-py's own HGETALL gives (errors as they are).

    >>> _as_hash([b"a", b"1", b"b", b"2"]), _as_hash([])
    ({b'a': b'1', b'b': b'2'}, {})
    """
    if not isinstance(reply, list):
        return reply
    fields = iter(reply)
    return dict(zip(fields, fields, strict=True))


# KEYS[1]: the hash; ARGV[1]: the new version; ARGV[2..]: field, value, ... Written only when newer.
_PUT_IF_NEWER = """
local held = redis.call('HGET', KEYS[1], 'version')
if held and tonumber(held) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], unpack(ARGV, 2))
return 1
"""


def _as_is(profile: Profile) -> Profile:
    return profile


class FeatureStore(Generic[V]):
    """Batched, cached profile reads from Redis, with a circuit breaker.

    ``get_many`` never raises for Redis trouble: profiles it cannot read come back
    as ``None`` with ``degraded`` set and the caller applies its fallback.
    ``parse`` turns a raw hash into what the caller wants (validated once per
    cache fill, not per event); a ``ValueError`` from it makes that profile
    :class:`Unreadable`.

    Lookups are counted in plain attributes (``hits``: served from the cache,
    ``misses``: read from Redis, ``down``: answered "store down"), which the
    metrics collector reads from every live store (:meth:`live`) at scrape time.
    """

    _live: ClassVar[weakref.WeakSet[FeatureStore[object]]] = weakref.WeakSet()

    def __init__(
        self,
        url: str,
        namespace: str,
        ttl_s: float = 30.0,
        negative_ttl_s: float = 1.0,
        max_cached: int = 200_000,
        socket_timeout_s: float = 0.5,
        failures_to_open: int = 3,
        retry_after_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        parse: Callable[[Profile], V] = _as_is,  # type: ignore[assignment]
        parse_raw: Callable[[RawProfile], V] | None = None,
    ) -> None:
        self._client = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.max_cached = max_cached
        self.failures_to_open = failures_to_open
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._decode: Callable[[object], Lookup[V]] = (
            (lambda reply: decode_reply(reply, parse))
            if parse_raw is None
            else (lambda reply: decode_raw_reply(reply, parse_raw))
        )
        self._put_if_newer = self._client.register_script(_PUT_IF_NEWER)
        self._read_script = self._client.register_script(_READ_HASHES)
        self._cache: dict[str, tuple[float, Lookup[V]]] = {}
        self._failed_in_a_row = 0
        self._open_until = 0.0
        self.round_trips = 0
        self.failures = 0
        self.refused = 0  # versioned writes Redis refused for their key (not retried)
        self.hits = 0
        self.misses = 0
        self.down = 0
        FeatureStore._live.add(self)  # type: ignore[arg-type]

    @classmethod
    def live(cls) -> list[FeatureStore[object]]:
        """Every store of this process that is still in use (for the metrics collector)."""
        return list(cls._live)

    def key(self, entity_id: str) -> str:
        return f"{self.namespace}:{entity_id}"

    @property
    def circuit_open(self) -> bool:
        return self._clock() < self._open_until

    def get_many(self, ids: Iterable[str]) -> tuple[dict[str, Lookup[V]], bool]:
        """Profiles for ``ids`` (None where missing) and whether the store was unreachable."""
        now = self._clock()
        found: dict[str, Lookup[V]] = {}
        missing: list[str] = []
        for entity_id in ids:
            if entity_id in found:
                continue
            hit = self._cache.get(entity_id)
            if hit is not None and hit[0] > now:
                found[entity_id] = hit[1]
            else:
                found[entity_id] = None
                missing.append(entity_id)
        self.hits += len(found) - len(missing)
        if not missing:
            return found, False
        if now < self._open_until:
            self.down += len(missing)
            return found, True
        if len(self._cache) + len(missing) > self.max_cached:
            self._cache.clear()
        read = 0
        try:
            for replies in self._reads([self.key(entity_id) for entity_id in missing]):
                self._failed_in_a_row = 0
                for entity_id, reply in zip(missing[read : read + len(replies)], replies, strict=True):
                    value = self._decode(reply)
                    found[entity_id] = value
                    fresh_for = self.negative_ttl_s if value is None or isinstance(value, Unreadable) else self.ttl_s
                    self._cache[entity_id] = (now + fresh_for, value)
                read += len(replies)
        except redis.RedisError as exc:
            self._failed(exc)
            self.misses += read
            self.down += len(missing) - read
            return found, True
        self.misses += read
        return found, False

    def _reads(self, keys: list[str]) -> Iterator[list[object]]:
        """Each key's HGETALL reply as a ``{field: value}`` dict, or its error, in order, one list per script
        call of at most :data:`READ_CHUNK` keys. A call's connection or protocol failure raises
        (``redis.RedisError``) after the calls before it were handed over; redis-py loads the script again
        where Redis does not have it (after a restart)."""
        for start in range(0, len(keys), READ_CHUNK):
            replies: list[object] = self._read_script(keys=keys[start : start + READ_CHUNK], client=self._client)
            self.round_trips += 1
            yield [_as_hash(reply) for reply in replies]

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self._failed_in_a_row += 1
        if self._failed_in_a_row >= self.failures_to_open:
            self._open_until = self._clock() + self.retry_after_s
            log.warning(
                "feature store unreachable %d times in a row (%s); fallbacks for %.1fs",
                self._failed_in_a_row,
                type(exc).__name__,
                self.retry_after_s,
            )

    def put_many(self, profiles: Mapping[str, Mapping[str, object]]) -> None:
        """Write whole profiles (absolute values: safe to repeat)."""
        pipe = self._client.pipeline(transaction=False)
        for entity_id, profile in profiles.items():
            pipe.hset(self.key(entity_id), mapping={k: str(v) for k, v in profile.items()})
        pipe.execute()

    def put_versioned(self, records: Mapping[str, tuple[int, Mapping[str, bytes | str]]]) -> int:
        """Write ``{id: (version, fields)}`` in one pipelined round trip; each hash only when ``version``
        is newer than the one it holds. Returns how many were written; raises ``redis.RedisError``."""
        if not records:
            return 0
        return sum(int(r) for r in self._versioned_pipeline(records).execute())

    def _versioned_pipeline(
        self, records: Mapping[str, tuple[int, Mapping[str, bytes | str]]]
    ) -> redis.client.Pipeline:
        pipe = self._client.pipeline(transaction=False)
        for entity_id, (version, fields) in records.items():
            args: list[bytes | str | int] = [version]
            for name, value in fields.items():
                args += [name, value]
            self._put_if_newer(keys=[self.key(entity_id)], args=args, client=pipe)
        return pipe

    def try_put_versioned(self, records: Mapping[str, tuple[int, Mapping[str, bytes | str]]]) -> bool:
        """:meth:`put_versioned`, reporting an unreachable store as False (logged) instead of raising.

        Only a connection or a timeout means "down, try again". A key Redis refuses (another
        program keeps a string or a list under it: WRONGTYPE) would be refused again on every
        retry and hold back every other write of the shard: it is logged, counted in
        ``refused``, and not retried.
        """
        if not records:
            return True
        outage = (redis.ConnectionError, redis.TimeoutError)
        try:
            replies = self._versioned_pipeline(records).execute(raise_on_error=False)
            down = next((r for r in replies if isinstance(r, outage)), None)
        except outage as exc:
            down = exc
        if down is not None:
            self.failures += 1
            log.warning("could not write %d values to Redis (%s); retrying", len(records), type(down).__name__)
            return False
        for entity_id, reply in zip(records, replies, strict=True):
            if isinstance(reply, Exception):
                self.refused += 1
                log.warning("Redis refused %s (%s); not retried", self.key(entity_id), reply)
        return True

    def scan(self, page: int = 1000) -> Iterator[list[tuple[str, Lookup[V]]]]:
        """Every hash of the namespace, parsed, a page (one SCAN and one read of its keys) at a time."""
        prefix = f"{self.namespace}:"
        cursor = 0
        while True:
            cursor, keys = self._client.scan(cursor, match=f"{prefix}*", count=page)
            if keys:
                names = [(k.decode() if isinstance(k, bytes) else str(k)) for k in keys]
                replies = [r for call in self._reads(names) for r in call]
                yield [(name[len(prefix) :], self._decode(r)) for name, r in zip(names, replies, strict=True)]
            if cursor == 0:
                return

    def close(self) -> None:
        self._client.close()
