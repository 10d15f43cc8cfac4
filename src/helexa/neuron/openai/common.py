"""What the OpenAI endpoints of the neuron share: field readers, sampling, caps and errors.

Pure: bodies in, dataclasses out. The daemon owns model lookup, tokenization and generation;
these modules own the client-visible texts of the checks, so the exact messages of the contract
live in one place. Validation: `null` means absent, a wrong type or range is
`invalid_value` naming the field; what we don't implement is refused by params.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from helexa.neuron.openai.params import (
    Refused,
    invalid_value,
    refuse,
)
from helexa.wire.errors import ApiError

MAX_STOP = 16


# -- errors ----------------------------------------------------------------------


def unsupported_content(message: str) -> ApiError:
    return ApiError(400, "unsupported_content", message)


def missing_model() -> ApiError:
    return ApiError(400, "missing_model_field", "missing 'model' field in request body")


def no_chat_template(model: str) -> ApiError:
    return ApiError(
        400,
        "unsupported_model_capability",
        f"model '{model}' has no chat template; use /v1/completions",
    )


def embedding_only(model: str) -> ApiError:
    return ApiError(
        400,
        "unsupported_model_capability",
        f"model '{model}' is an embedding model; use /v1/embeddings",
    )


def context_length_exceeded(prompt_len: int, max_prompt: int) -> ApiError:
    return ApiError(
        400,
        "context_length_exceeded",
        f"prompt is {prompt_len} tokens; this neuron accepts at most {max_prompt}",
        extras={"prompt_len": prompt_len, "max": max_prompt},
    )


# -- field readers ------------------------------------------------------------------------------


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise missing_model()
    return model


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(
    body: dict[str, Any],
    key: str,
    lo: float,
    hi: float,
    problem: str,
    *,
    lo_open: bool = False,
) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise invalid_value(key, problem)
    if v < lo or v > hi or (lo_open and v == lo):
        raise invalid_value(key, problem)
    return float(v)


def positive_int(body: dict[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if not is_int(v) or v < 1:
        raise invalid_value(key, "must be an integer >= 1")
    return int(v)


def flag(body: dict[str, Any], key: str, default: bool) -> bool:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise invalid_value(key, "must be a boolean")
    return v


def obj_field(body: dict[str, Any], key: str) -> dict[str, Any]:
    v = body.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise invalid_value(key, "must be an object")
    return v


@dataclass(slots=True)
class Sampling:
    """What the worker's `generate` frame carries under `sampling`; None = model default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    logit_bias: dict[str, float] | None = None  # token id (a decimal string) -> bias

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = v
        return out


def parse_sampling(body: dict[str, Any], *, full: bool = True) -> Sampling:
    """Sampling fields with their ranges. `full=False` reads only temperature, top_p and
    the penalties (the Responses request has no others)."""
    s = Sampling(
        temperature=_number(body, "temperature", 0, 2, "must be a number between 0 and 2"),
        top_p=_number(
            body, "top_p", 0, 1, "must be a number greater than 0 and at most 1", lo_open=True
        ),
    )
    for key in ("presence_penalty", "frequency_penalty"):
        setattr(s, key, _number(body, key, -2, 2, "must be a number between -2 and 2"))
    if not full:
        return s
    top_k = body.get("top_k")
    if top_k is not None:
        if not is_int(top_k) or top_k < -1:
            raise invalid_value("top_k", "must be an integer >= 0 (0 turns it off)")
        s.top_k = max(0, int(top_k))  # -1 is vLLM's spelling of "off"
    s.min_p = _number(body, "min_p", 0, 1, "must be a number between 0 and 1")
    s.repetition_penalty = _number(
        body, "repetition_penalty", 0, math.inf, "must be a number greater than 0", lo_open=True
    )
    seed = body.get("seed")
    if seed is not None:
        if not is_int(seed) or not -(2**63) <= seed < 2**64:
            raise invalid_value("seed", "must be an integer")
        s.seed = int(seed)
    s.logit_bias = _logit_bias(body.get("logit_bias"))
    return s


def _logit_bias(v: Any) -> dict[str, float] | None:
    """`logit_bias`: token ids (JSON keys, so strings) → a bias in [-100, 100]; whether the ids
    are in the vocabulary is `check_logit_bias`'s job, once the model is known."""
    if v is None:
        return None
    if not isinstance(v, dict):
        raise invalid_value("logit_bias", "must be an object mapping token ids to numbers")
    out: dict[str, float] = {}
    for k, b in v.items():
        if not k.isdigit() or not k.isascii() or len(k) > 10:
            raise invalid_value("logit_bias", f"key '{k[:32]}' is not a token id")
        if isinstance(b, bool) or not isinstance(b, int | float) or not -100 <= b <= 100:
            raise invalid_value("logit_bias", f"bias of token {k} must be between -100 and 100")
        out[str(int(k))] = float(b)
    return out or None


def check_logit_bias(sampling: Sampling, tokenizer: Any) -> None:
    """Every biased token id is in the model's vocabulary (`tokenizer.vocab_size`)."""
    if not sampling.logit_bias:
        return
    vocab_size = int(tokenizer.vocab_size)
    for k in sampling.logit_bias:
        if int(k) >= vocab_size:
            raise invalid_value(
                "logit_bias", f"token id {k} is not in the vocabulary (size {vocab_size})"
            )


def parse_stop(body: dict[str, Any]) -> list[str]:
    """`stop`: a string or up to 16 strings; empty strings mean nothing and are dropped."""
    v = body.get("stop")
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v else []
    if not isinstance(v, list) or len(v) > MAX_STOP or not all(isinstance(s, str) for s in v):
        raise invalid_value("stop", f"must be a string or an array of at most {MAX_STOP} strings")
    return [s for s in v if s]


def max_tokens_field(body: dict[str, Any]) -> int | None:
    mct = positive_int(body, "max_completion_tokens")
    mt = positive_int(body, "max_tokens")
    return mct if mct is not None else mt


def check_unsupported(body: dict[str, Any], table: tuple[Refused, ...]) -> None:
    """The fields we don't implement (params.py), after `n`'s type check."""
    n = body.get("n")
    if n is not None and not is_int(n):
        raise invalid_value("n", "must be an integer")
    refuse(body, table)


def include_usage(body: dict[str, Any]) -> bool:
    """`stream_options.include_usage`: the usage chunk is sent only when asked, as OpenAI does."""
    opts = obj_field(body, "stream_options")
    v = opts.get("include_usage")
    if v is not None and not isinstance(v, bool):
        raise invalid_value("stream_options.include_usage", "must be a boolean")
    return bool(v)


def response_schema(fmt: Any, param: str) -> dict[str, Any] | None:
    """`response_format` (chat: the schema under `json_schema`) or `text.format` (Responses:
    the schema beside `type`) → the JSON schema the answer must match; None for plain text.
    `json_object` is any JSON object; `strict` is accepted either way: we always enforce."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise invalid_value(
            param, "must be an object with type 'text', 'json_object' or 'json_schema'"
        )
    assert isinstance(fmt, dict)
    at, spec = param, fmt
    if param == "response_format":  # chat nests the schema's fields one level down
        at, nested = f"{param}.json_schema", fmt.get("json_schema")
        if not isinstance(nested, dict):
            raise invalid_value(at, "must be an object with the 'name' and 'schema'")
        spec = nested
    for key in ("name", "description"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise invalid_value(f"{at}.{key}", "must be a string")
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise invalid_value(f"{at}.strict", "must be a boolean")
    schema = spec.get("schema")
    if schema is None:
        return {"type": "object"}
    if not isinstance(schema, dict):  # whether we can enforce it: constrain/plan.py
        raise invalid_value(f"{at}.schema", "must be a JSON schema object")
    return schema


# -- prompt and output caps ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """A loaded model's limits (`limit.context`, `limit.output`) and the neuron's
    `max_prompt_tokens`."""

    context: int
    output: int
    max_prompt_tokens: int

    @property
    def max_prompt(self) -> int:
        """Longest prompt accepted: the configured cap, and room for at least one token."""
        return max(0, min(self.max_prompt_tokens, self.context - 1))


def check_prompt(prompt_len: int, limits: Limits) -> None:
    if prompt_len > limits.max_prompt:
        raise context_length_exceeded(prompt_len, limits.max_prompt)


def output_cap(prompt_len: int, limits: Limits) -> int:
    return max(1, min(limits.output, limits.context - prompt_len))


def clamp_max_tokens(
    requested: int | None, prompt_len: int, limits: Limits, default: int | None = None
) -> int:
    """Clamp to `min(limit.output, limit.context − prompt_len)`, never reject for size.
    Absent → `default` (16 for completions) if given, else the cap itself."""
    cap = output_cap(prompt_len, limits)
    if requested is None:
        requested = default if default is not None else cap
    return min(requested, cap)
