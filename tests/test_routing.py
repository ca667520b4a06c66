"""``split_by_route`` with bytewax.testing: each item to its route's stream, an unknown route fails loudly."""

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.testing import TestingSink, TestingSource, run_main

from operators.routing import split_by_route


def _route(items: list[str], routes: list[str]) -> dict[str, list[str]]:
    flow = Dataflow("routes")
    out = split_by_route("route", op.input("in", flow, TestingSource(items, batch_size=3)), lambda x: x[0], routes)
    got: dict[str, list[str]] = {name: [] for name in routes}
    for name, stream in out.items():
        op.output(f"out_{name}", stream, TestingSink(got[name]))
    run_main(flow)
    return got


def test_each_item_goes_to_its_own_route_in_order():
    got = _route(["a1", "b1", "a2", "c1", "b2", "a3"], ["a", "b", "c"])
    assert got == {"a": ["a1", "a2", "a3"], "b": ["b1", "b2"], "c": ["c1"]}


def test_an_unknown_route_fails_the_flow_instead_of_dropping_the_item():
    with pytest.raises(BytewaxRuntimeError, match="route_tag"):
        _route(["a1", "x1"], ["a", "b"])


@pytest.mark.parametrize("routes", [[], ["a", "a"]])
def test_routes_must_be_distinct_and_non_empty(routes):
    with pytest.raises(ValueError, match="distinct and non-empty"):
        _route(["a1"], routes)
