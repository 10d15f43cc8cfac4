"""A `/models/load` body as the registry uses it: the spec (with the load errors a bad body
gets) and the admission limits it sets, the spec's own values over the `[admission]` ones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from helexa.neuron.admission import Admission
from helexa.neuron.metrics import NeuronMetrics
from helexa.wire.errors import ApiError
from helexa.wire.neuron import ModelSpec

AdmissionDefaults = tuple[int, int, float]
"""`[admission]`: max_in_flight, max_queue_depth, max_wait_secs."""


def parse_spec(body: Mapping[str, Any]) -> ModelSpec:
    if "model_id" not in body:
        raise ApiError(400, "missing_model_field", "missing 'model_id' field in request body")
    try:
        return ModelSpec.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = str(err["loc"][0]) if err["loc"] else "model_id"
        raise ApiError(
            400, "invalid_value", f"'{param}' {err['msg'].lower()}", param=param
        ) from None


def admission_limits(spec: ModelSpec, defaults: AdmissionDefaults) -> tuple[int, int, float]:
    d_if, d_qd, d_wait = defaults
    return (
        spec.max_in_flight or d_if,
        d_qd if spec.max_queue_depth is None else spec.max_queue_depth,
        spec.max_wait_secs or d_wait,
    )


def new_admission(
    model: str, spec: ModelSpec, defaults: AdmissionDefaults, metrics: NeuronMetrics
) -> Admission:
    return Admission(
        model,
        *admission_limits(spec, defaults),
        on_reject=lambda reason: metrics.rejections(model, reason).inc(),
    )
