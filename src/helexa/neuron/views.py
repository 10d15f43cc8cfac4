"""What `/models`, `/health`, `/v1/models` and the metrics show of the model records: one
record type (records.ModelRecord) read by every view."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from helexa.neuron.records import FAILED, LOADED, LOADING, RECOVERING, ModelRecord

Records = Mapping[str, ModelRecord]


def token_limit(mpe: Any, max_prompt: int, max_output: int) -> dict[str, int]:
    """A model's `limit`, split so a client can rely on it: `input` prompt tokens still leave
    room for `output` generated ones (input + output <= context). When the model's context is
    shorter than the two caps together, the output cap gets at most half of it, so neither
    side is 0 (an 8k model with the default caps: 4096 + 4096)."""
    total = max_prompt + max_output
    context = min(int(mpe), total) if isinstance(mpe, int) and mpe > 0 else total
    output = min(max_output, max(context // 2, context - max_prompt))
    return {"context": context, "input": min(max_prompt, context - output), "output": output}


def loaded_reply(rec: ModelRecord, already: bool) -> dict[str, Any]:
    """The `/models/load` answer for a loaded model."""
    return {
        "status": "loaded",
        "model": rec.id,
        "already_loaded": already,
        "vram_used_mb": rec.memory_mb(),
        "devices": list(rec.devices),
    }


def model_info(rec: ModelRecord, limit: dict[str, int]) -> dict[str, Any]:
    """One entry of `/models` (see docs/reference.md#endpoints-neuron)."""
    tok = rec.tokenizer
    caps = rec.info.capabilities
    out: dict[str, Any] = {
        "id": rec.id,
        "source": rec.source,
        "harness": rec.info.harness or rec.harness,
        "quant": rec.info.quant or rec.quant,
        "status": rec.status,
        "devices": list(rec.devices),
        "vram_used_mb": rec.memory_mb(),
        "capabilities": list(caps),
        "limit": limit,
        "tool_call": bool(getattr(tok, "tool_call", False)),
        "reasoning": bool(getattr(tok, "reasoning", False)),
        "loaded_at": rec.loaded_at,
        "last_used_at": rec.last_used_at,
        "restarts": rec.restarts,
        "max_in_flight": rec.admission.max_in_flight,
        "max_queue_depth": rec.admission.max_queue_depth,
        "max_wait_secs": rec.admission.max_wait_secs,
    }
    if rec.placement is not None:
        out["placement"] = rec.placement.describe()
    if rec.info.max_batch is not None:  # torch: how many decode in one forward, or why one
        out["batching"] = {"max_batch": rec.info.max_batch, "refused": rec.info.batching_refused}
    if rec.status == LOADING:
        out["progress"] = rec.progress or {
            "phase": "load",
            "done_bytes": None,
            "total_bytes": None,
        }
    if rec.status == FAILED:
        out["error"] = rec.error
    return out


def list_models(
    records: Records, limit: Callable[[ModelRecord], dict[str, int]]
) -> list[dict[str, Any]]:
    return [model_info(records[k], limit(records[k])) for k in sorted(records)]


def health_models(records: Records) -> list[dict[str, Any]]:
    return [
        {
            "id": rec.id,
            "status": rec.status,
            "in_flight": rec.admission.in_flight,
            "queue_depth": rec.admission.queue_depth,
        }
        for _, rec in sorted(records.items())
    ]


def openai_models(records: Records) -> dict[str, Any]:
    data = [
        {"id": r.id, "object": "model", "created": r.loaded_at or 0, "owned_by": "helexa"}
        for _, r in sorted(records.items())
        if r.status == LOADED
    ]
    return {"object": "list", "data": data}


def degraded(records: Records) -> bool:
    return any(r.status in (FAILED, RECOVERING) for r in records.values())


def gauge_rows(records: Records) -> list[tuple[str, int, int, int | None]]:
    return [
        (r.id, r.admission.in_flight, r.admission.queue_depth, r.memory_mb())
        for r in records.values()
    ]
