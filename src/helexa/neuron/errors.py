"""The model-level errors a neuron answers: one constructor per
condition, exact texts."""

from __future__ import annotations

from collections.abc import Sequence

from helexa.wire.errors import ApiError


def not_known(model: str) -> ApiError:
    return ApiError(404, "model_not_found", f"model '{model}' is not known to this neuron")


def not_loaded(model: str) -> ApiError:
    return ApiError(404, "model_not_found", f"model '{model}' is not loaded on this neuron")


def not_ready(model: str, status: str) -> ApiError:
    return ApiError(
        503,
        "model_not_ready",
        f"model '{model}' is {status} on this neuron; retry shortly",
        retry_after=2,
    )


def still_loading(model: str) -> ApiError:
    return ApiError(
        409,
        "model_loading",
        f"model '{model}' is still loading; retry when the load completes",
        retry_after=5,
    )


def load_failed(model: str, detail: str) -> ApiError:
    msg = (
        detail
        if detail.startswith(f"loading '{model}' failed")
        else (f"loading '{model}' failed: {detail}")
    )
    return ApiError(500, "load_failed", msg)


def insufficient_memory(model: str, required: int, free: int, devices: Sequence[int]) -> ApiError:
    devs = ",".join(str(d) for d in devices)
    return ApiError(
        507,
        "insufficient_memory",
        f"model '{model}' needs about {required} MB but only {free} MB is free on device(s) {devs}",
        extras={"required_mb": required, "free_mb": free},
    )


def worker_crashed(model: str) -> ApiError:
    return ApiError(
        503,
        "worker_crashed",
        f"model worker for '{model}' crashed during the request; it is being restarted",
        retry_after=2,
    )


def model_unloaded(model: str) -> ApiError:
    return ApiError(503, "model_unloaded", f"model '{model}' was unloaded", retry_after=2)


def generation_failed(model: str) -> ApiError:
    return ApiError(500, "internal_server_error", f"generation failed for model '{model}'")
