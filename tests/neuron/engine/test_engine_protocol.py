"""The worker protocol's codec: every frame type survives encode/decode, bad ops get answers."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from helexa.neuron.engine import frames as f
from helexa.neuron.engine.errors import LoadError
from helexa.neuron.engine.loader import FaultPlan, LoadSpec
from helexa.neuron.engine.protocol import BadOp, decode_event, decode_op, encode


def wire(frame: f.Op | f.Event) -> dict:
    data = encode(frame)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    obj = orjson.loads(data[4:])
    assert isinstance(obj, dict)
    return obj


EVENTS: list[f.Event] = [
    f.Progress("load", 0, 10),
    f.Progress("warmup"),
    f.Ready(f.ReadyInfo(harness="torch", vram_used_mb=3, eos_token_ids=[2], compiled=True)),
    f.LoadFailed(507, "insufficient_memory", "no room", {"required_mb": 9, "free_mb": 1}),
    f.LoadFailed(400, "unsupported_quant", "no"),
    f.Delta("r1", "héllo", 2),
    f.Done("r1", "stop", "</s>", 7),
    f.Done("r2", "length", None, 3, [1, 2, 3]),
    f.Error("r3", "invalid_value", "bad", "top_p"),
    f.Error("r4", "internal_error", "boom"),
    f.Embedding("e1", [[0.5, 1.0]], 2),
    f.Pong("p1", None),
    f.FaultReport("non_finite", "nan at step 2"),
]


@pytest.mark.parametrize("frame", EVENTS, ids=lambda e: type(e).__name__)
def test_every_event_round_trips(frame: f.Event) -> None:
    assert decode_event(wire(frame)) == frame


def test_unset_optional_fields_stay_off_the_wire() -> None:
    assert "token_ids" not in wire(f.Done("r", "stop", None, 1))
    assert "param" not in wire(f.Error("r", "c", "m"))
    assert "extras" not in wire(f.LoadFailed(500, "load_failed", "m"))
    assert decode_event({"ev": "something_new"}) is None


def test_ops_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELEXA_TEST_FAULTS", "1")
    (tmp_path / "config.json").write_text("{}")
    spec = LoadSpec(
        path=str(tmp_path), served_id="m", quant="fp32", test_faults=FaultPlan(exit_at_step=2)
    )
    ops: list[f.Op] = [
        f.Load(spec),
        f.Generate("r1", [1, 2], 5, {"temperature": 0}, ["x"], ["<think>"], True),
        f.Generate("r2", [3], None),
        f.Generate("r3", [3], 4, constraint=f.Constraint('start: "a"', after="</think>")),
        f.Generate("r4", [3], 4, {"logit_bias": {"7": -100}}, constraint=f.Constraint("x")),
        f.Cancel("r1"),
        f.Embed("e", [[1], [2, 3]]),
        f.Ping("p"),
        f.Shutdown(),
    ]
    for op in ops:
        assert decode_op(wire(op)) == op


GEN = {"op": "generate", "id": "g", "prompt_ids": [1]}


@pytest.mark.parametrize(
    ("frame", "code", "param"),
    [
        ({"op": "generate", "id": "g", "prompt_ids": []}, "invalid_value", None),
        ({"op": "generate", "id": "g", "prompt_ids": [1, True]}, "invalid_value", "prompt_ids"),
        (
            {**GEN, "max_tokens": "9"},
            "invalid_value",
            "max_tokens",
        ),
        (
            {**GEN, "sampling": 3},
            "invalid_value",
            "sampling",
        ),
        ({**GEN, "hold": [1]}, "invalid_value", "hold"),
        ({**GEN, "constraint": {"grammar": ""}}, "invalid_value", "constraint"),
        ({**GEN, "constraint": {"grammar": "x", "after": 3}}, "invalid_value", "constraint"),
        ({"op": "embed", "id": "g", "inputs": [[1], []]}, "invalid_value", None),
        ({"op": "frobnicate", "id": "g"}, "unknown_op", None),
    ],
)
def test_bad_ops_carry_their_answer(frame: dict, code: str, param: str | None) -> None:
    with pytest.raises(BadOp) as ei:
        decode_op(frame)
    assert ei.value.error is not None
    assert (ei.value.error.id, ei.value.error.code, ei.value.error.param) == ("g", code, param)


def test_an_op_without_an_id_has_no_answer() -> None:
    with pytest.raises(BadOp) as ei:
        decode_op({"op": "cancel"})
    assert ei.value.error is None


def test_a_refused_load_spec_is_a_load_error() -> None:
    with pytest.raises(LoadError) as ei:
        decode_op({"op": "load", "spec": {"path": "/nonexistent", "quant": "int4"}})
    assert (ei.value.status, ei.value.code) == (400, "unsupported_quant")
