"""Shard keys that Bytewax places one on each worker.

A keyed step runs a key's logic on worker ``siphash13(key) % workers``: Bytewax 0.21 hashes the
key string with Rust's ``DefaultHasher`` (SipHash-1-3, zero keys; ``src/operators.rs`` and
``src/timely.rs``, ``PartitionFn``). It does not read a shard called ``"1"`` as a worker number:
on 2 workers the keys ``"0"`` and ``"1"`` both run on worker 1, and ``"0"`` to ``"7"`` split 6/2.
The batching steps want one shard per worker, so :func:`worker_keys` picks, for each worker, the
first of ``"0"``, ``"1"``, ``"2"``, ... that Bytewax routes there. ``tests/test_microbatch.py``
checks the placement against a real multi-worker run, so an engine that hashed differently would
fail there, not quietly idle workers.
"""

from __future__ import annotations

import functools

_MASK = 0xFFFFFFFFFFFFFFFF


def _rotl(x: int, bits: int) -> int:
    return ((x << bits) | (x >> (64 - bits))) & _MASK


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with zero keys, as Rust's ``DefaultHasher`` computes it.

    >>> hex(siphash13(b""))  # pinned; tests/test_microbatch.py checks the placement it implies against Bytewax
    '0xd1fba762150c532c'
    """
    v0, v1 = 0x736F6D6570736575, 0x646F72616E646F6D
    v2, v3 = 0x6C7967656E657261, 0x7465646279746573

    def sip_round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
        v0 = (v0 + v1) & _MASK
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _MASK
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _MASK
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _MASK
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)
        return v0, v1, v2, v3

    whole = len(data) - len(data) % 8
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = sip_round(v0, v1, v2, v3)
        v0 ^= m
    last = ((len(data) & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= last
    v0, v1, v2, v3 = sip_round(v0, v1, v2, v3)
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = sip_round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, workers: int) -> int:
    """The worker Bytewax runs ``key``'s logic on (a Rust ``str`` hashes its bytes, then ``0xff``).

    >>> [worker_of(str(i), 2) for i in range(8)]  # eight shards on two workers: six on worker 1
    [1, 1, 1, 1, 0, 0, 1, 1]
    """
    return siphash13(key.encode() + b"\xff") % workers


@functools.cache
def worker_keys(workers: int) -> tuple[str, ...]:
    """One shard key per worker, the ``w``-th placed on worker ``w`` (one worker: ``"0"``, the name a single
    shard always had, so checkpoints of single-worker flows keep their keys).

    >>> worker_keys(1), worker_keys(2), [worker_of(k, 4) for k in worker_keys(4)]
    (('0',), ('4', '0'), [0, 1, 2, 3])
    """
    if workers < 1:
        raise ValueError(f"a flow has at least one worker, not {workers}")
    found: dict[int, str] = {}
    candidate = 0
    while len(found) < workers:
        found.setdefault(worker_of(str(candidate), workers), str(candidate))
        candidate += 1
    return tuple(found[w] for w in range(workers))
