"""Dynamic branching: one stream in, one stream per named route out."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream

X = TypeVar("X")


def _has_route(name: str, tagged: tuple[str, object]) -> bool:
    return tagged[0] == name


def split_by_route(
    step_id: str, up: Stream[X], route_of: Callable[[X], str], routes: Sequence[str]
) -> dict[str, Stream[X]]:
    """Send each item to the stream of its route; an unknown route is a bug and fails loudly.

    A composition of ``map`` and ``branch`` steps named ``<step_id>_...`` (a
    Bytewax ``@operator`` cannot return a variable number of streams).

    ```python
    out = split_by_route("route", turns, lambda t: t.route, ["knowledge", "handoff", "small_talk"])
    answers = out["knowledge"]
    ```
    """
    if len(set(routes)) != len(routes) or not routes:
        raise ValueError("routes must be distinct and non-empty")
    known = frozenset(routes)

    def checked(x: X) -> str:
        route = route_of(x)
        if route not in known:
            raise ValueError(f"route {route!r} is not one of {sorted(known)}")
        return route

    tagged = op.map(f"{step_id}_tag", up, lambda x: (checked(x), x))
    out: dict[str, Stream[X]] = {}
    rest: Stream[tuple[str, X]] = tagged
    for name in routes[:-1]:
        b: op.BranchOut[tuple[str, X], tuple[str, X]] = op.branch(
            f"{step_id}_is_{name}", rest, functools.partial(_has_route, name)
        )
        out[name] = op.map(f"{step_id}_{name}", b.trues, lambda rx: rx[1])
        rest = b.falses
    out[routes[-1]] = op.map(f"{step_id}_{routes[-1]}", rest, lambda rx: rx[1])
    return out
