"""Load-spec checks on the neuron: harness, quant, devices, and resolve_spec's answers."""

from __future__ import annotations

import pytest

from helexa.neuron.sources import (
    check_devices,
    check_harness,
    check_quant,
    resolve_spec,
)
from helexa.wire.errors import ApiError
from helexa.wire.neuron import ModelSpec

SOURCES = {"helexa": "https://registry.helexa.ai"}


def test_harness_candle_is_torch() -> None:
    assert check_harness("candle", ["torch"]) == "torch"
    assert check_harness(None, ["torch"]) == "torch"
    assert check_harness("torch", ["torch"]) == "torch"


@pytest.mark.parametrize("h", ["nope", "llamacpp"])
def test_harness_not_available(h: str) -> None:
    with pytest.raises(ApiError) as ei:
        check_harness(h, ["torch"])
    assert (ei.value.status, ei.value.code) == (400, "unsupported_harness")
    assert ei.value.message == f"harness '{h}' is not available on this neuron (available: torch)"


def test_harness_none_available() -> None:
    with pytest.raises(ApiError) as ei:
        check_harness(None, [])
    assert ei.value.message == "harness 'torch' is not available on this neuron (available: none)"


@pytest.mark.parametrize(
    ("q", "want"),
    [(None, None), ("bf16", "bf16"), ("BF16", "bf16"), ("fp16", "fp16"), ("f32", "fp32")],
)
def test_quant_ok(q: str | None, want: str | None) -> None:
    assert check_quant(q, "torch") == want


@pytest.mark.parametrize("q", ["q4k", "q5k", "q6k", "q8_0", "int8", "int4"])
def test_quant_later(q: str) -> None:
    with pytest.raises(ApiError) as ei:
        check_quant(q, "torch")
    assert (ei.value.status, ei.value.code) == (400, "unsupported_quant")
    assert ei.value.message == f"quant '{q}' is not supported by harness 'torch' yet; use 'bf16'"


@pytest.mark.parametrize("q", ["Q4_K_M", "Q6_K", "Q8_0", "IQ2_XXS", "q5_k_s"])
def test_quant_gguf(q: str) -> None:
    with pytest.raises(ApiError) as ei:
        check_quant(q, "torch")
    assert ei.value.message == f"quant '{q}' is a GGUF type; use harness 'llamacpp'"


def test_quant_other() -> None:
    with pytest.raises(ApiError) as ei:
        check_quant("awq", "torch")
    assert ei.value.message == "quant 'awq' is not supported by harness 'torch'"


def test_devices() -> None:
    assert check_devices(None, 2) is None
    assert check_devices([], 2) is None
    assert check_devices([1, 0, 1], 2) == [1, 0]
    for bad in (2, -1):
        with pytest.raises(ApiError) as ei:
            check_devices([0, bad], 2)
        assert (ei.value.status, ei.value.code) == (400, "invalid_devices")
        assert ei.value.message == f"device index {bad} does not exist on this host"


def resolve(**spec: object) -> object:
    return resolve_spec(ModelSpec.model_validate(spec), sources=SOURCES, device_count=2)


def test_resolve_spec_defaults() -> None:
    r = resolve_spec(ModelSpec(model_id="Qwen/Qwen3-8B"), sources=SOURCES)
    assert r.source.qualified() == "huggingface:Qwen/Qwen3-8B"
    assert r.source_str == "huggingface:Qwen/Qwen3-8B"
    assert (r.served_id, r.harness, r.quant, r.devices) == ("Qwen/Qwen3-8B", "torch", None, None)


def test_resolve_spec_everything() -> None:
    r = resolve_spec(
        ModelSpec(
            model_id="helexa:Helexa/Q",
            served_model_id="a/b",
            harness="candle",
            quant="fp16",
            devices=[1],
            tensor_parallel=1,
        ),
        sources=SOURCES,
        device_count=2,
    )
    assert (r.served_id, r.harness, r.quant, r.devices) == ("a/b", "torch", "fp16", [1])
    assert r.source.qualified() == "helexa:Helexa/Q"


@pytest.mark.parametrize(
    ("spec", "code", "param"),
    [
        ({"model_id": "Qwen"}, "invalid_model_id", None),
        ({"model_id": "acme:Q/x"}, "unknown_source", None),
        ({"model_id": "Q/x", "harness": "nope"}, "unsupported_harness", None),
        ({"model_id": "Q/x", "quant": "Q4_K_M"}, "unsupported_quant", None),
        ({"model_id": "Q/x", "devices": [5]}, "invalid_devices", None),
        ({"model_id": "Q/x", "tensor_parallel": 2}, "unsupported_parameter", "tensor_parallel"),
        ({"model_id": "/srv/q.Q4_K_M.gguf"}, "unsupported_harness", None),
    ],
)
def test_resolve_spec_errors(spec: dict[str, object], code: str, param: str | None) -> None:
    with pytest.raises(ApiError) as ei:
        resolve(**spec)
    assert (ei.value.status, ei.value.code, ei.value.param) == (400, code, param)
    if code == "unsupported_parameter":
        assert ei.value.message == "tensor_parallel > 1 is not supported yet"
