"""What a request may cost, decided before dispatch, and the output cap that makes it binding.

A reservation is `prompt bound + output cap`. The cap follows the neuron's own precedence per
route and is written into the forwarded body, so the node cannot generate past what was reserved;
the prompt bound is conservative, so what the node reports rarely exceeds it (and settlement
never charges more than was reserved: auth.LocalProvider.settle).
"""

from __future__ import annotations

from typing import Any

import orjson

from helexa.cortex.fleet import Fleet

DEFAULT_OUTPUT = 4096  # no node has told us the model's limit yet (never polled, never loaded)
COMPLETIONS_DEFAULT = 16  # the neuron's default max_tokens on /v1/completions (§2.15)

# Per route: the fields that cap output, the one the neuron honours first.
CAP_FIELDS: dict[str, tuple[str, ...]] = {
    "/v1/chat/completions": ("max_completion_tokens", "max_tokens"),
    "/v1/messages": ("max_tokens",),  # the translated chat body carries the Anthropic value
    "/v1/responses": ("max_output_tokens",),
    "/v1/completions": ("max_tokens",),
}


def prompt_bound(body: bytes) -> int:
    """Tokens the prompt may take, without a tokenizer: one per body byte. A byte-level BPE token
    covers at least one byte of text, and the JSON framing outweighs the chat template's own
    tokens. Measured with the tiny test tokenizer, the real count was 0.27x (English) to 0.98x
    (random digits) of this; bytes/4 was ~4x low on digits, punctuation and random letters."""
    return len(body)


def limit_output(fleet: Fleet, model: str | None) -> int:
    """The model's advertised `limit.output` (the smallest any node reports), else the smallest
    max_output_tokens a node advertises, else DEFAULT_OUTPUT."""
    limits = []
    caps = []
    for node in fleet:
        state = node.models.get(model) if model is not None else None
        if state is not None and state.limit is not None and state.limit.output > 0:
            limits.append(state.limit.output)
        if node.discovery is not None and node.discovery.max_output_tokens > 0:
            caps.append(node.discovery.max_output_tokens)
    if limits:
        return min(limits)
    return min(caps) if caps else DEFAULT_OUTPUT


def _positive(v: Any) -> int | None:
    """An integer >= 1 as the neuron accepts it (no bools, no floats), else None."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        return None
    return v


def _honoured(fields: tuple[str, ...], obj: dict[str, Any]) -> str | None:
    """The field the neuron reads the cap from: the first one set (null counts as unset)."""
    return next((f for f in fields if obj.get(f) is not None), None)


def output_cap(path: str, obj: dict[str, Any], limit: int) -> int:
    """The output tokens to reserve: the field the neuron would honour, at most `limit`; absent
    (or invalid: the neuron refuses it) → the neuron's default for the route."""
    fields = CAP_FIELDS.get(path)
    if fields is None:
        return 0  # embeddings generate nothing
    name = _honoured(fields, obj)
    requested = _positive(obj[name]) if name is not None else None
    if requested is not None:
        return min(requested, limit)
    return min(COMPLETIONS_DEFAULT, limit) if path == "/v1/completions" else limit


def write_cap(path: str, obj: dict[str, Any], body: bytes, cap: int) -> bytes:
    """`body` (which is `obj` serialised, or its splices) with the honoured cap field set to
    `cap`; `obj` is updated too. No cap field at all → spliced on (no re-serialisation of a long
    prompt); set to something else, or null → re-serialised; already `cap`, or invalid (the
    neuron refuses it) → as is."""
    fields = CAP_FIELDS.get(path)
    if not fields:
        return body
    name = _honoured(fields, obj)
    if name is not None:
        current = _positive(obj[name])
        if current is None or current == cap:
            return body
    elif not any(f in obj for f in fields):
        obj[fields[-1]] = cap
        return body.rstrip()[:-1] + b',"' + fields[-1].encode() + b'":' + str(cap).encode() + b"}"
    obj[name or fields[0]] = cap
    return orjson.dumps(obj)
