"""OpenAI chat and completions requests on the neuron: checks, caps and errors (§2.15-§2.18).

Pure: bodies in, dataclasses out. The daemon owns model lookup, tokenization and generation;
this module owns the client-visible texts of the checks, so the exact messages of the contract
live in one place. Validation follows §2.15: `null` means absent, a wrong type or range is
`invalid_value` naming the field; what we don't implement is refused by params.py. The replies
are in openai_replies.py, embeddings in embeddings_api.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from helexa.neuron.params import (
    CHAT_REFUSED,
    COMPLETIONS_REFUSED,
    Refused,
    invalid_value,
    refuse,
    thinking_kwargs,
    unsupported_parameter,
)
from helexa.wire.errors import ApiError

__all__ = [
    "ChatRequest",
    "CompletionRequest",
    "Limits",
    "Sampling",
    "check_prompt",
    "clamp_max_tokens",
    "context_length_exceeded",
    "invalid_value",
    "missing_model",
    "model_unloaded",
    "no_chat_template",
    "parse_chat",
    "parse_completion",
    "require_model",
    "unsupported_parameter",
    "worker_crashed",
]

MAX_STOP = 16
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
ROLES = ("system", "developer", "user", "assistant", "tool")

# -- errors (§2.15, §2.21) ----------------------------------------------------------------------


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


def worker_crashed(model: str) -> ApiError:
    return ApiError(
        503,
        "worker_crashed",
        f"model worker for '{model}' crashed during the request; it is being restarted",
        retry_after=2,
    )


def model_unloaded(model: str) -> ApiError:
    return ApiError(503, "model_unloaded", f"model '{model}' was unloaded", retry_after=2)


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


def _bool(body: dict[str, Any], key: str, default: bool) -> bool:
    v = body.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise invalid_value(key, "must be a boolean")
    return v


def _object(body: dict[str, Any], key: str) -> dict[str, Any]:
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

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = v
        return out


def parse_sampling(body: dict[str, Any], *, full: bool = True) -> Sampling:
    """Sampling fields with their §2.15 ranges. `full=False` reads only temperature, top_p and
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
    return s


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


def _max_tokens(body: dict[str, Any]) -> int | None:
    mct = positive_int(body, "max_completion_tokens")
    mt = positive_int(body, "max_tokens")
    return mct if mct is not None else mt


def _check_unsupported(body: dict[str, Any], table: tuple[Refused, ...]) -> None:
    """The fields we don't implement (params.py), after `n`'s type check."""
    n = body.get("n")
    if n is not None and not is_int(n):
        raise invalid_value("n", "must be an integer")
    refuse(body, table)


def include_usage(body: dict[str, Any]) -> bool:
    """`stream_options.include_usage`: the usage chunk is sent only when asked, as OpenAI does."""
    opts = _object(body, "stream_options")
    v = opts.get("include_usage")
    if v is not None and not isinstance(v, bool):
        raise invalid_value("stream_options.include_usage", "must be a boolean")
    return bool(v)


def check_format(fmt: Any, param: str) -> None:
    """`response_format` / `text.format`: only plain text in W1."""
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind in ("json_object", "json_schema"):
        raise unsupported_parameter(param, f"'{param}' of type '{kind}' is not supported")
    if kind != "text":
        raise invalid_value(
            param, "must be an object with type 'text', 'json_object' or 'json_schema'"
        )


# -- chat ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class ChatRequest:
    """A checked chat request. `messages` are as the client sent them (the tokenizer does the
    §2.15 preprocessing); `tools` is None when there are none or `tool_choice` is "none", and
    then the output is not parsed for calls."""

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    sampling: Sampling = field(default_factory=Sampling)
    stop: list[str] = field(default_factory=list)
    max_tokens: int | None = None
    stream: bool = False
    include_usage: bool = False
    max_tool_calls: int | None = None  # Responses only

    @property
    def parse_tools(self) -> bool:
        return self.tools is not None

    @property
    def call_limit(self) -> int | None:
        """How many calls the reply may carry: 1 without parallel calls, `max_tool_calls`."""
        one = 1 if self.parallel_tool_calls is False else None
        limits = [n for n in (self.max_tool_calls, one) if n is not None]
        return min(limits) if limits else None


def _json_args(v: Any, where: str) -> None:
    """Call arguments: an object, or a string holding a JSON object."""
    if isinstance(v, dict):
        return
    if isinstance(v, str):
        try:
            if isinstance(json.loads(v), dict):
                return
        except ValueError:
            pass
    raise invalid_value(where, "must be a JSON object or a string holding one")


def check_part(part: Any, where: str, model: str, vision: bool, allowed: tuple[str, ...]) -> str:
    """One content part → its type, after the unsupported-content checks."""
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise invalid_value(where, "must be an object with a 'type'")
    kind = part["type"]
    if kind in ("image_url", "input_image", "image"):
        if not vision:
            raise unsupported_content(f"model '{model}' does not accept image input")
    elif kind in ("input_audio", "audio"):
        raise unsupported_content("audio input is not supported")
    elif kind in ("file", "input_file"):
        raise unsupported_content("file input is not supported")
    if kind not in allowed:
        raise invalid_value(f"{where}.type", "must be one of " + ", ".join(allowed))
    if kind in ("text", "input_text", "output_text") and not isinstance(part.get("text"), str):
        raise invalid_value(f"{where}.text", "must be a string")
    return kind


def _content(m: dict[str, Any], at: str, model: str, vision: bool, nullable: bool) -> None:
    content = m.get("content")
    if isinstance(content, str) or (content is None and nullable):
        return
    if not isinstance(content, list):
        raise invalid_value(f"{at}.content", "must be a string or an array of content parts")
    allowed = ("text", "image_url") if m["role"] == "user" else ("text",)
    if m["role"] == "assistant":
        allowed = ("text", "refusal")
    for j, part in enumerate(content):
        check_part(part, f"{at}.content[{j}]", model, vision, allowed)


def _tool_calls(calls: Any, at: str) -> None:
    if calls is None:
        return
    if not isinstance(calls, list):
        raise invalid_value(f"{at}.tool_calls", "must be an array")
    for j, call in enumerate(calls):
        where = f"{at}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            raise invalid_value(f"{where}.function", "must be an object")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_value(f"{where}.function.name", "must be a non-empty string")
        _json_args(fn.get("arguments", {}), f"{where}.function.arguments")


def check_messages(messages: Any, model: str, vision: bool) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise invalid_value("messages", "must be a non-empty array")
    for i, m in enumerate(messages):
        at = f"messages[{i}]"
        if not isinstance(m, dict):
            raise invalid_value(at, "must be an object")
        role = m.get("role")
        if role not in ROLES:
            raise invalid_value(f"{at}.role", "must be one of " + ", ".join(ROLES))
        _content(m, at, model, vision, nullable=role == "assistant")
        if role == "assistant":
            _tool_calls(m.get("tool_calls"), at)
            rc = m.get("reasoning_content")
            if rc is not None and not isinstance(rc, str):
                raise invalid_value(f"{at}.reasoning_content", "must be a string")
        elif role == "tool":
            tid = m.get("tool_call_id")
            if tid is not None and not isinstance(tid, str):
                raise invalid_value(f"{at}.tool_call_id", "must be a string")
    return messages


def check_tools(tools: Any) -> list[dict[str, Any]]:
    """Chat-form tools: `[{"type":"function","function":{"name",…}}]`."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise invalid_value("tools", "must be an array")
    for i, t in enumerate(tools):
        if not isinstance(t, dict):
            raise invalid_value(f"tools[{i}]", "must be an object")
        kind = t.get("type", "function")
        if kind != "function":
            raise unsupported_parameter(
                "tools", f"tool type '{kind}' is not supported; only 'function' tools are"
            )
        fn = t.get("function")
        if not isinstance(fn, dict):
            raise invalid_value(f"tools[{i}].function", "must be an object")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise invalid_value(f"tools[{i}].function.name", "must be a non-empty string")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise invalid_value(f"tools[{i}].function.parameters", "must be an object")
    return tools


def check_tool_choice(choice: Any) -> str | None:
    """'none' or 'auto'; 'required' and named choices are refused by `_check_unsupported`."""
    if choice is None or choice in ("none", "auto"):
        return choice
    raise invalid_value("tool_choice", "must be 'none' or 'auto'")


def parse_chat(body: dict[str, Any], *, vision: bool = False) -> ChatRequest:
    """Check a `/v1/chat/completions` body (§2.15, §2.16, params.py)."""
    model = require_model(body)
    _check_unsupported(body, CHAT_REFUSED)
    check_format(body.get("response_format"), "response_format")
    messages = check_messages(body.get("messages"), model, vision)
    tools = check_tools(body.get("tools"))
    choice = check_tool_choice(body.get("tool_choice"))
    ptc = body.get("parallel_tool_calls")
    if ptc is not None and not isinstance(ptc, bool):
        raise invalid_value("parallel_tool_calls", "must be a boolean")
    return ChatRequest(
        model=model,
        messages=messages,
        tools=tools if tools and choice != "none" else None,
        tool_choice=choice,
        parallel_tool_calls=ptc,
        chat_template_kwargs=thinking_kwargs(
            body,
            _object(body, "chat_template_kwargs"),
            body.get("reasoning_effort"),
            "reasoning_effort",
        ),
        sampling=parse_sampling(body),
        stop=parse_stop(body),
        max_tokens=_max_tokens(body),
        stream=_bool(body, "stream", False),
        include_usage=include_usage(body),
    )


# -- prompt and output caps ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """A loaded model's limits (§2.6 `limit.context`, `limit.output`) and the neuron's
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
    """§2.15: clamp to `min(limit.output, limit.context − prompt_len)`, never reject for size.
    Absent → `default` (16 for completions) if given, else the cap itself."""
    cap = output_cap(prompt_len, limits)
    if requested is None:
        requested = default if default is not None else cap
    return min(requested, cap)


# -- text completions (§2.18) -------------------------------------------------------------------


@dataclass(slots=True)
class CompletionRequest:
    model: str
    prompt: str
    sampling: Sampling = field(default_factory=Sampling)
    stop: list[str] = field(default_factory=list)
    max_tokens: int | None = None  # absent: clamp_max_tokens(..., default=16)
    stream: bool = False
    include_usage: bool = False


def parse_completion(body: dict[str, Any]) -> CompletionRequest:
    model = require_model(body)
    _check_unsupported(body, COMPLETIONS_REFUSED)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
        raise unsupported_parameter("prompt", "'prompt' with more than one string is not supported")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise invalid_value("prompt", "must be a string or an array of one string")
    return CompletionRequest(
        model=model,
        prompt=prompt,
        sampling=parse_sampling(body),
        stop=parse_stop(body),
        max_tokens=positive_int(body, "max_tokens"),
        stream=_bool(body, "stream", False),
        include_usage=include_usage(body),
    )
