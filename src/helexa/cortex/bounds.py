"""The prompt byte cap: a body too large for the model's context is refused before it is
reserved, routed or tokenized anywhere (docs/reference.md#errors)."""

from __future__ import annotations

from helexa.cortex.fleet import Fleet
from helexa.wire.errors import ApiError


def prompt_byte_cap(fleet: Fleet, model: str) -> tuple[int, int] | None:
    """(byte cap, context tokens) from the smallest context any node reports for the model;
    None until a node has reported it (the neuron applies the same cap)."""
    limits = [
        s.limit
        for s in (node.models.get(model) for node in fleet)
        if s is not None and s.limit is not None and s.limit.context > 0
    ]
    if not limits:
        return None
    best = min(limits, key=lambda lim: lim.context)
    return best.prompt_bytes, best.context


def check_prompt_bytes(fleet: Fleet, model: str, size: int) -> None:
    cap = prompt_byte_cap(fleet, model)
    if cap is not None and size > cap[0]:
        raise ApiError(
            400,
            "context_length_exceeded",
            f"prompt is too long: the {size}-byte body exceeds the {cap[0]}-byte maximum for "
            f"'{model}' ({cap[1]}-token context)",
        )
