"""The per-event dataclasses that cross processes pickle as (class, values), and older pickles still load."""

import copyreg
import pickle
import pickletools

import numpy as np
import pytest

from dataflows.fraud import CardEvent, EnrichedEvent, Scored
from models.fraud_features import CardProfile
from models.transaction import Transaction
from operators.event_windows import Windowed, WindowStatus
from operators.kafka.records import KafkaRecord, SourceRecord
from state import windows

SOURCE = SourceRecord(
    "transactions", 3, 41, b"card-1", b'{"event_id": "e1"}', 1_700_000_000_000, [("traceparent", b"00")]
)
TXN = Transaction("e1", "card-1", 12.5, "USD", "m1", "grocery", "FR", 1_700_000_000_000, 1.5, "Shop")
EVENT = CardEvent(SOURCE, TXN)
RECENT = [1.0, 3.0, ("grocery", "FR"), 2.0, 4.0, ("travel", "US")]
PROFILE = CardProfile("FR", 40.0, 400.0, 1.0)
FEATURES = (1.0, 12.5, 2.0, 20.0, 1.0, 30.0)
ENRICHED = EnrichedEvent(EVENT, FEATURES, WindowStatus.OK, PROFILE, None, False, RECENT)
SAMPLES = [
    SOURCE,
    TXN,
    EVENT,
    KafkaRecord("decisions", b"card-1", b"{}", [("sluice.id", b"transactions/3/41")], 2),
    PROFILE,
    Windowed(EVENT, FEATURES, WindowStatus.LATE, RECENT),
    ENRICHED,
]


@pytest.mark.parametrize("obj", SAMPLES, ids=lambda o: type(o).__name__)
def test_a_round_trip_gives_an_equal_object_built_by_one_constructor_call(obj):
    cls, values = obj.__reduce__()
    assert cls is type(obj) and cls(*values) == obj
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    assert pickle.loads(data) == obj
    assert "NEWOBJ" not in _opcodes(data)  # no object built field by field, nested ones included


def _opcodes(data: bytes) -> set[str]:
    return {op.name for op, _, _ in pickletools.genops(data)}


def test_scored_keeps_its_arrays_and_decision():
    row = np.arange(15, dtype=np.float32)
    s = Scored(
        ENRICHED, row, ["velocity_burst"], "v1", "mlp", 0.4, True, 0.6, np.ones((32, 6), np.float32), 0.5, "review"
    )
    back = pickle.loads(pickle.dumps(s))
    assert (back.row == row).all() and back.row.dtype == np.float32 and back.sequence.shape == (32, 6)
    assert (back.item, back.rules, back.version, back.score, back.decision) == (
        ENRICHED,
        ["velocity_burst"],
        "v1",
        0.5,
        "review",
    )


@pytest.mark.parametrize("obj", SAMPLES, ids=lambda o: type(o).__name__)
def test_a_pickle_written_before_tuple_pickling_still_loads(obj):
    """What a recovery store written by the code before holds: the default ``object.__reduce_ex__`` form."""
    reduce = type(obj).__reduce__
    delattr(type(obj), "__reduce__")
    try:
        old = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        assert "NEWOBJ" in _opcodes(old)  # the default path: built empty, then its slots set
    finally:
        type(obj).__reduce__ = reduce
    assert pickle.loads(old) == obj


class _OldRecent:
    """How the code before 2026-12-02 pickled an event's recent events, a class of three columns named
    ``state.windows.Recent``: tuple-pickled (``Recent(times, values, extras)``) since the morning, and before
    that the slotted dataclass default (built empty, then its three fields set)."""

    def __init__(self, times: list[float], values: list[float], extras: list[tuple[str, str]], tupled: bool) -> None:
        self.fields, self.tupled = {"times": times, "values": values, "extras": extras}, tupled

    @property  # type: ignore[misc]
    def __class__(self):  # what the pickler checks __newobj__'s class against
        return windows.Recent

    def __reduce_ex__(self, protocol):
        if self.tupled:
            return windows.Recent, tuple(self.fields.values())
        return copyreg.__newobj__, (windows.Recent,), (None, self.fields)  # type: ignore[attr-defined]


@pytest.mark.parametrize("tupled", [True, False], ids=["tuple-pickled", "slots-default"])
def test_recent_events_pickled_by_the_code_before_load_flat(tupled):
    """A recovery store holds the events waiting in a micro-batch at a checkpoint, their recent events included."""
    recent = _OldRecent([1.0, 2.0], [3.0, 4.0], [("grocery", "FR"), ("travel", "US")], tupled)
    old = pickle.dumps(EnrichedEvent(EVENT, FEATURES, WindowStatus.OK, PROFILE, None, False, recent))  # type: ignore[arg-type]
    assert b"Recent" in old and ("NEWOBJ" in _opcodes(old)) is not tupled
    loaded = pickle.loads(old)
    assert loaded == ENRICHED
    assert b"Recent" not in pickle.dumps(loaded)  # written again, it is a plain list
