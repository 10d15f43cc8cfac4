"""A model's status changes only through ModelRecord.move, along the MOVES table."""

from __future__ import annotations

import pytest

from helexa.neuron.admission import Admission
from helexa.neuron.records import (
    FAILED,
    LOADED,
    LOADING,
    MOVES,
    RECOVERING,
    UNLOADED,
    IllegalMove,
    ModelRecord,
)
from helexa.wire.neuron import ModelSpec

STATUSES = (LOADING, LOADED, RECOVERING, UNLOADED, FAILED)


def record(status: str) -> ModelRecord:
    spec = ModelSpec(model_id="Org/M")
    rec = ModelRecord("Org/M", "hub", spec, Admission("Org/M"))
    rec.status = status
    return rec


@pytest.mark.parametrize("start", STATUSES)
@pytest.mark.parametrize("to", STATUSES)
def test_every_move_is_allowed_or_refused_by_the_table(start: str, to: str) -> None:
    rec = record(start)
    if to in MOVES[start]:
        rec.move(to)
        assert rec.status == to
    else:
        with pytest.raises(IllegalMove, match=f"{start} -> {to}"):
            rec.move(to)
        assert rec.status == start


def test_the_lifecycle_a_model_goes_through() -> None:
    rec = record(UNLOADED)
    for to in (LOADING, LOADED, RECOVERING, LOADED, UNLOADED, LOADING, FAILED, LOADING):
        rec.move(to)
    # a loaded model is never "loaded again" without going through a load or a recovery
    rec.move(LOADED)
    with pytest.raises(IllegalMove):
        rec.move(LOADING)
