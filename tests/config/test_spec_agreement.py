"""A catalogue entry cortex accepts is a load spec the neuron accepts, and the other way round:
both check it with the one `wire.ModelSpec`."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from helexa.config.catalogue import ModelProfile
from helexa.neuron.load_request import parse_spec
from helexa.neuron.sources import check_quant
from helexa.wire.errors import ApiError

KNOBS: list[tuple[str, Any]] = [
    (key, value)
    for key in ("max_in_flight", "max_queue_depth", "max_wait_secs")
    for value in (-1, 0, 0.5, 1, 2, 120, None)
] + [("min_devices", 2), ("min_devices", 1)]
KNOBS += [("prefix_cache_mb", v) for v in (-1, 0, 512, None)]
KNOBS += [("max_batch", v) for v in (-1, 0, 1, 16, None)]
KNOBS += [("kv_budget_mb", v) for v in (-1, 0, 4096, None)]
KNOBS += [("compile", v) for v in ("on", "OFF", "auto", True, False, "fast", 1)]


def catalogue_accepts(key: str, value: Any) -> bool:
    try:
        ModelProfile.model_validate({"id": "a/b", key: value})
    except ValidationError:
        return False
    return True


def neuron_accepts(spec: dict[str, Any]) -> bool:
    try:
        parse_spec(spec)
    except ApiError as e:
        assert e.status == 400 and e.code == "invalid_value"
        return False
    return True


@pytest.mark.parametrize(("key", "value"), KNOBS)
def test_cortex_and_neuron_agree_on_a_spec(key: str, value: Any) -> None:
    if key == "min_devices":
        wire = ModelProfile(id="a/b", min_devices=value).load_spec([0, 1])
        assert neuron_accepts(wire.model_dump())
        return
    accepted = catalogue_accepts(key, value)
    assert accepted == neuron_accepts({"model_id": "a/b", key: value})
    if accepted:
        sent = ModelProfile.model_validate({"id": "a/b", key: value}).load_spec([0]).model_dump()
        assert neuron_accepts(sent)


def test_zero_max_wait_is_refused_where_it_is_written() -> None:
    # It used to pass the catalogue and then fail every cold load on the neuron.
    with pytest.raises(ValidationError, match="max_wait_secs"):
        ModelProfile.model_validate({"id": "a/b", "max_wait_secs": 0})


@pytest.mark.parametrize(
    "quant", ["bf16", "bfloat16", "F16", "half", "int8", "q4k", "Q4_K_M", "fp8"]
)
def test_cortex_and_neuron_agree_on_a_quant(quant: str) -> None:
    try:
        ModelProfile.model_validate({"id": "a/b", "quant": quant})
        accepted = True
    except ValidationError:
        accepted = False
    try:
        check_quant(quant, "torch")
        refused = False
    except ApiError as e:
        assert e.code == "unsupported_quant"
        refused = True
    assert accepted is not refused
