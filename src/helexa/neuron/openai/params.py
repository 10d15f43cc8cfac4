"""Which OpenAI request fields the neuron honours, accepts as harmless, or refuses.

A field we don't implement is refused with `400 unsupported_parameter` naming it whenever
ignoring it would change the answer; a field that only steers OpenAI's own service (billing,
storage, caching, abuse tracking) is accepted and ignored. Fields in no table are ignored (they
are not OpenAI's, and vLLM-style clients send extras). `tests/neuron/test_params.py` checks that
every field of the `openai` SDK's request types is in exactly one table.

The thinking switch: `chat_template_kwargs.enable_thinking`, then a top-level
`enable_thinking` (vLLM, SGLang), then `reasoning_effort` (chat) / `reasoning.effort`
(Responses) decide `enable_thinking` for the chat template. Efforts `none` and `minimal` turn
thinking off (OpenAI: "few or no reasoning tokens"); `low` and up turn it on, since our models'
switch is on/off only. A template without the switch ignores it, as transformers does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from helexa.wire.errors import ApiError

THINKING_OFF = ("none", "minimal")
THINKING_ON = ("low", "medium", "high", "xhigh", "max")
EFFORTS = THINKING_OFF + THINKING_ON


def invalid_value(param: str, problem: str) -> ApiError:
    return ApiError(400, "invalid_value", f"'{param}' {problem}", param=param)


def unsupported_parameter(param: str, message: str) -> ApiError:
    return ApiError(400, "unsupported_parameter", message, param=param)


@dataclass(frozen=True, slots=True)
class Refused:
    """`param` is refused when `when(value)` holds for a value that isn't null."""

    param: str
    when: Callable[[Any], bool]
    message: str


def _any(v: Any) -> bool:
    return True


def _truthy(v: Any) -> bool:
    return bool(v)


def _not_one(v: Any) -> bool:
    return v != 1


def _not_medium(v: Any) -> bool:
    return v != "medium"


def _audio(v: Any) -> bool:
    return isinstance(v, list) and "audio" in v


def _named_function_call(v: Any) -> bool:
    return v not in ("none", "auto")


def _logprob_include(v: Any) -> bool:
    return isinstance(v, list) and "message.output_text.logprobs" in v


# refusals shared by chat and completions (their messages are pinned by tests)
_SAMPLING = (
    Refused("n", _not_one, "'n' other than 1 is not supported"),
    Refused("best_of", _not_one, "'best_of' other than 1 is not supported"),
    Refused("logprobs", _truthy, "'logprobs' is not supported"),
    Refused("top_logprobs", _truthy, "'top_logprobs' is not supported"),
)

CHAT_REFUSED = (
    *_SAMPLING,
    Refused("prediction", _any, "'prediction' (predicted outputs) is not supported"),
    Refused("audio", _any, "'audio' output is not supported"),
    Refused("modalities", _audio, "'modalities' with 'audio' is not supported"),
    Refused("functions", _truthy, "'functions' is not supported; use 'tools'"),
    Refused("function_call", _named_function_call, "'function_call' is not supported; use 'tools'"),
    Refused("web_search_options", _any, "'web_search_options' is not supported: no web search"),
    Refused("moderation", _any, "'moderation' is not supported"),
    Refused("verbosity", _not_medium, "'verbosity' other than 'medium' is not supported"),
)
CHAT_HONOURED = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
        "seed", "stop", "stream", "stream_options", "presence_penalty", "frequency_penalty",
        "tools", "tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort",
        "logit_bias",
    }
)  # fmt: skip
CHAT_HARMLESS = frozenset(
    {
        "user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
        "prompt_cache_retention", "prompt_cache_options",
    }
)  # fmt: skip

COMPLETIONS_REFUSED = (
    *_SAMPLING,
    Refused("echo", _truthy, "'echo' is not supported"),
    Refused("suffix", _truthy, "'suffix' is not supported"),
)
COMPLETIONS_HONOURED = frozenset(
    {
        "model", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "stream",
        "stream_options", "presence_penalty", "frequency_penalty", "logit_bias",
    }
)  # fmt: skip
COMPLETIONS_HARMLESS = frozenset({"user"})

PREVIOUS_RESPONSE_UNSUPPORTED = (
    "previous_response_id is not supported: this server does not store responses"
)
RESPONSES_REFUSED = (
    Refused("previous_response_id", _any, PREVIOUS_RESPONSE_UNSUPPORTED),
    Refused("conversation", _any, "'conversation' is not supported: this server stores nothing"),
    Refused("prompt", _any, "'prompt' (stored prompt templates) is not supported"),
    Refused("background", _truthy, "'background' is not supported"),
    Refused("top_logprobs", _truthy, "'top_logprobs' is not supported"),
    Refused("include", _logprob_include, "'include' of output logprobs is not supported"),
    Refused("moderation", _any, "'moderation' is not supported"),
)
RESPONSES_HONOURED = frozenset(
    {
        "model", "input", "instructions", "stream", "max_output_tokens", "temperature", "top_p",
        "tools", "tool_choice", "parallel_tool_calls", "reasoning", "text", "metadata",
        "max_tool_calls",
    }
)  # fmt: skip
RESPONSES_HARMLESS = frozenset(
    {
        "store", "user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
        "prompt_cache_options", "service_tier", "truncation", "stream_options",
        "context_management", "image", "access_programs", "background_options",
    }
)  # fmt: skip


def refuse(body: dict[str, Any], table: tuple[Refused, ...]) -> None:
    """The first refused field the body sets → 400 `unsupported_parameter` naming it."""
    for r in table:
        v = body.get(r.param)
        if v is not None and r.when(v):
            raise unsupported_parameter(r.param, r.message)


def _flag(v: Any, param: str) -> bool | None:
    if v is None:
        return None
    if not isinstance(v, bool):
        raise invalid_value(param, "must be a boolean")
    return v


def _effort(v: Any, param: str) -> bool | None:
    if v is None:
        return None
    if v not in EFFORTS:
        raise invalid_value(param, "must be one of " + ", ".join(EFFORTS))
    return v in THINKING_ON


def thinking_kwargs(
    body: dict[str, Any], kwargs: dict[str, Any], effort: Any, effort_param: str
) -> dict[str, Any]:
    """`chat_template_kwargs` with `enable_thinking` decided (see the module docstring)."""
    on = _flag(kwargs.get("enable_thinking"), "chat_template_kwargs.enable_thinking")
    top = _flag(body.get("enable_thinking"), "enable_thinking")
    by_effort = _effort(effort, effort_param)
    if on is None:
        on = top if top is not None else by_effort
    return kwargs if on is None else {**kwargs, "enable_thinking": on}
