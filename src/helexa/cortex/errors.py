"""The cortex error catalogue: one constructor per condition, exact texts."""

from __future__ import annotations

from helexa.wire.errors import ApiError
from helexa.wire.http import num

INSUFFICIENT_QUOTA = "insufficient_quota"
RATE_LIMIT = "rate_limit_error"


def invalid_key() -> ApiError:
    return ApiError(401, "invalid_api_key", "invalid API key")


def missing_key() -> ApiError:
    return ApiError(401, "invalid_api_key", "missing API key; supply 'Authorization: Bearer <key>'")


def admin_required() -> ApiError:
    return ApiError(
        403, "admin_required", "this endpoint requires an admin API key", type="permission_error"
    )


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404, "model_not_found", f"model '{model}' not found on any node and not in catalogue"
    )


def model_not_servable(model: str) -> ApiError:
    return ApiError(
        404,
        "model_not_servable",
        f"model '{model}' is in the catalogue but no configured neuron's topology can "
        "satisfy its constraints",
    )


def _unavailable(message: str, retry_after: int) -> ApiError:
    return ApiError(503, "service_unavailable", message, retry_after=retry_after)


def no_healthy_nodes() -> ApiError:
    return _unavailable("no healthy nodes available", 5)


def no_healthy_neuron(model: str) -> ApiError:
    return _unavailable(f"no healthy neuron can serve model '{model}' right now; retry shortly", 3)


def no_room(model: str) -> ApiError:
    return _unavailable(
        f"no healthy neuron has room for model '{model}' without displacing busy or "
        "higher-priority models; retry shortly",
        3,
    )


def unreachable_no_replica(node: str, model: str) -> ApiError:
    return _unavailable(
        f"node '{node}' is unreachable and no other replica of model '{model}' is loaded; "
        "retry shortly",
        3,
    )


def recovering(model: str, node: str) -> ApiError:
    return _unavailable(
        f"model '{model}' is recovering on node '{node}' (worker restart in progress); "
        "retry shortly",
        2,
    )


def cold_load_failed(
    model: str,
    node: str,
    reason: str,
    neuron_status: int | None = None,
    neuron_code: str | None = None,
) -> ApiError:
    return ApiError(
        502,
        "cold_load_failed",
        f"cold-load of '{model}' on '{node}' failed: {reason}",
        extras={"node": node, "neuron_status": neuron_status, "neuron_code": neuron_code},
    )


def marked_failed(model: str, node: str) -> ApiError:
    """Not retryable: the node will not try the load again until the model is unloaded."""
    return cold_load_failed(model, node, "model is marked failed on this node; unload it to reset")


def endpoint_failed(model: str, node: str) -> ApiError:
    return ApiError(
        502,
        "upstream_error",
        f"failed to resolve inference endpoint for model '{model}' on node '{node}'",
    )


def upstream_connection_error() -> ApiError:
    return ApiError(502, "upstream_connection_error", "upstream request failed")


def upstream_timeout(secs: float) -> ApiError:
    return ApiError(504, "upstream_timeout", f"upstream did not respond within {num(secs)}s")


def upstream_malformed() -> ApiError:
    return ApiError(502, "upstream_malformed_response", "malformed upstream response")


def rate_limited(message: str, retry_after: int) -> ApiError:
    return ApiError(
        429, "rate_limit_exceeded", message, type=RATE_LIMIT, retry_after=max(1, retry_after)
    )


def quota_exhausted(message: str) -> ApiError:
    return ApiError(429, INSUFFICIENT_QUOTA, message, type=INSUFFICIENT_QUOTA)


def invalid_value(param: str, message: str) -> ApiError:
    return ApiError(400, "invalid_value", message, param=param)
