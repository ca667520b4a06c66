"""Online feature store on Redis: profiles as hashes, read in pipelined batches.

A profile for entity ``id`` lives in the hash ``<namespace>:<id>``. Reads go
through a small TTL cache and one pipelined round trip fetches every missing
key of a batch. Writes are absolute (HSET of whole values), so replaying them
is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

import redis

log = logging.getLogger(__name__)

Profile = dict[str, str]


class RedisUnavailable(ConnectionError):
    """Redis did not accept us: not listening, wrong password, wrong URL."""


def check_redis(url: str, timeout_s: float) -> None:
    """Connect and PING; raise :class:`RedisUnavailable` with one line saying why (the password never shown)."""
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    where = client.connection_pool.connection_kwargs
    target = where.get("path") or f"{where.get('host')}:{where.get('port')}"
    try:
        client.ping()
    except redis.AuthenticationError:
        raise RedisUnavailable(f"Redis at {target} refused the credentials in SLUICE_REDIS_URL") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise RedisUnavailable(f"Redis at {target} needs a password: put it in SLUICE_REDIS_URL") from None
        raise RedisUnavailable(f"Redis at {target} answered PING with an error: {exc}") from None
    except redis.RedisError as exc:
        raise RedisUnavailable(
            f"cannot reach Redis at {target} within {timeout_s:g}s ({type(exc).__name__}); check SLUICE_REDIS_URL"
        ) from None
    finally:
        client.close()


class FeatureStore:
    """Batched, cached profile reads from Redis, with a circuit breaker.

    ``get_many`` never raises for Redis trouble: profiles it cannot read come back
    as ``None`` and the caller applies its fallback. After a failure Redis is left
    alone for ``retry_after_s`` so a dead server does not add a timeout to every batch.
    """

    def __init__(
        self,
        url: str,
        namespace: str,
        ttl_s: float = 30.0,
        max_cached: int = 200_000,
        socket_timeout_s: float = 0.05,
        retry_after_s: float = 1.0,
    ) -> None:
        self._client = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.max_cached = max_cached
        self.retry_after_s = retry_after_s
        self._cache: dict[str, tuple[float, Profile | None]] = {}
        self._down_until = 0.0
        self.round_trips = 0
        self.failures = 0

    def key(self, entity_id: str) -> str:
        return f"{self.namespace}:{entity_id}"

    def get_many(self, ids: Iterable[str]) -> tuple[dict[str, Profile | None], bool]:
        """Profiles for ``ids`` (None where missing) and whether Redis was unreachable."""
        now = time.monotonic()
        found: dict[str, Profile | None] = {}
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
        if not missing:
            return found, False
        if now < self._down_until:
            return found, True
        try:
            pipe = self._client.pipeline(transaction=False)
            for entity_id in missing:
                pipe.hgetall(self.key(entity_id))
            replies = pipe.execute()
            self.round_trips += 1
        except redis.RedisError as exc:
            self.failures += 1
            self._down_until = now + self.retry_after_s
            log.warning("feature store unreachable (%s); using fallbacks for %.1fs", exc, self.retry_after_s)
            return found, True
        if len(self._cache) + len(missing) > self.max_cached:
            self._cache.clear()
        expires = now + self.ttl_s
        for entity_id, reply in zip(missing, replies, strict=True):
            profile = {k.decode(): v.decode() for k, v in reply.items()} if reply else None
            found[entity_id] = profile
            self._cache[entity_id] = (expires, profile)
        return found, False

    def put_many(self, profiles: Mapping[str, Mapping[str, object]]) -> None:
        """Write whole profiles (absolute values: safe to repeat)."""
        pipe = self._client.pipeline(transaction=False)
        for entity_id, profile in profiles.items():
            pipe.hset(self.key(entity_id), mapping={k: str(v) for k, v in profile.items()})
        pipe.execute()

    def close(self) -> None:
        self._client.close()
