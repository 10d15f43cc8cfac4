"""Request fields we don't implement are refused naming them, harmless ones are accepted, and the
thinking switch (params.py). The tables are checked against the `openai` SDK's request types, so
a field the SDK adds fails here until it is classified."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types import completion_create_params as completions_params
from openai.types.chat import completion_create_params as chat_params
from openai.types.responses import response_create_params as responses_params

from helexa.neuron.openai import params as p
from helexa.neuron.openai.chat import parse_chat
from helexa.neuron.openai.completions import parse_completion
from helexa.neuron.openai.responses import parse_responses
from helexa.neuron.parse import OutputParser
from helexa.wire.errors import ApiError

MODEL = "Qwen/Qwen3-8B"
TOOLS = [{"type": "function", "function": {"name": "Read"}}]


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


def completion(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Once", **extra}


def responses(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": "hi", **extra}


def refused(fn: Any, body: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as e:
        fn(body)
    assert e.value.status == 400 and e.value.type == "invalid_request_error"
    return e.value


@pytest.mark.parametrize(
    "sdk,honoured,harmless,table",
    [
        (chat_params.CompletionCreateParamsBase, p.CHAT_HONOURED, p.CHAT_HARMLESS, p.CHAT_REFUSED),
        (
            completions_params.CompletionCreateParamsBase,
            p.COMPLETIONS_HONOURED,
            p.COMPLETIONS_HARMLESS,
            p.COMPLETIONS_REFUSED,
        ),
        (
            responses_params.ResponseCreateParamsBase,
            p.RESPONSES_HONOURED,
            p.RESPONSES_HARMLESS,
            p.RESPONSES_REFUSED,
        ),
    ],
)
def test_every_sdk_field_is_classified_once(
    sdk: Any, honoured: frozenset[str], harmless: frozenset[str], table: tuple[p.Refused, ...]
) -> None:
    refusable = {r.param for r in table}
    fields = set(sdk.__annotations__)
    assert fields - honoured - harmless - refusable == set(), "unclassified SDK fields"
    assert not honoured & harmless and not honoured & refusable and not harmless & refusable


CHAT_REFUSALS = [
    ("prediction", {"type": "content", "content": "x"}),
    ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("functions", [{"name": "f"}]),
    ("function_call", {"name": "f"}),
    ("web_search_options", {}),
    ("moderation", {"model": "omni-moderation-latest"}),
    ("verbosity", "low"),
    ("n", 2),
    ("logprobs", True),
    ("top_logprobs", 3),
]


@pytest.mark.parametrize("field,value", CHAT_REFUSALS)
def test_chat_refuses_what_it_would_ignore(field: str, value: Any) -> None:
    e = refused(parse_chat, chat(tools=TOOLS, **{field: value}))
    assert (e.code, e.param) == ("unsupported_parameter", field)
    assert f"'{field}'" in e.message and "not supported" in e.message


@pytest.mark.parametrize(
    "field,value",
    [("echo", True), ("suffix", "end"), ("best_of", 3), ("n", 2)],
)
def test_completions_refuses_what_it_would_ignore(field: str, value: Any) -> None:
    e = refused(parse_completion, completion(**{field: value}))
    assert (e.code, e.param) == ("unsupported_parameter", field)


@pytest.mark.parametrize(
    "field,value",
    [
        ("conversation", "conv_1"),
        ("prompt", {"id": "pmpt_1"}),
        ("background", True),
        ("top_logprobs", 2),
        ("include", ["message.output_text.logprobs"]),
        ("moderation", {"model": "omni-moderation-latest"}),
        ("tool_choice", {"type": "allowed_tools", "mode": "auto", "tools": []}),
    ],
)
def test_responses_refuses_what_it_would_ignore(field: str, value: Any) -> None:
    e = refused(parse_responses, responses(**{field: value}))
    assert (e.code, e.param) == ("unsupported_parameter", field)


def test_harmless_and_neutral_values_are_accepted() -> None:
    parse_chat(
        chat(
            user="u",
            metadata={"k": "v"},
            store=True,
            service_tier="priority",
            safety_identifier="s",
            prompt_cache_key="k",
            prompt_cache_retention="24h",
            logit_bias={},
            modalities=["text"],
            function_call="auto",
            verbosity="medium",
            n=1,
            logprobs=False,
            top_logprobs=0,
            stream_options={"include_obfuscation": False},
        )
    )
    parse_completion(completion(user="u", echo=False, suffix="", best_of=1, logit_bias={}))
    r = parse_responses(
        responses(
            store=False,
            user="u",
            service_tier="flex",
            truncation="auto",
            include=["reasoning.encrypted_content"],
            max_tool_calls=3,
            background=False,
            metadata={"k": "v"},
            safety_identifier="s",
            prompt_cache_key="k",
        )
    )
    echo = r.echo
    assert (echo["user"], echo["metadata"], echo["safety_identifier"]) == ("u", {"k": "v"}, "s")
    assert echo["prompt_cache_key"] == "k" and echo["store"] is False


def test_include_usage() -> None:
    assert parse_chat(chat(stream=True, stream_options={"include_usage": True})).include_usage
    assert not parse_chat(chat(stream=True, stream_options={"include_usage": False})).include_usage
    assert not parse_chat(chat(stream=True)).include_usage
    assert parse_completion(completion(stream_options={"include_usage": True})).include_usage
    for bad, param in (
        ({"include_usage": "yes"}, "stream_options.include_usage"),
        ([], "stream_options"),
    ):
        e = refused(parse_chat, chat(stream=True, stream_options=bad))
        assert (e.code, e.param) == ("invalid_value", param)


# -- the thinking switch ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra,kwargs",
    [
        ({}, {}),
        ({"chat_template_kwargs": {"enable_thinking": False}}, {"enable_thinking": False}),
        ({"enable_thinking": False}, {"enable_thinking": False}),
        ({"enable_thinking": True, "reasoning_effort": "none"}, {"enable_thinking": True}),
        (
            {"chat_template_kwargs": {"enable_thinking": True}, "enable_thinking": False},
            {"enable_thinking": True},
        ),
        ({"reasoning_effort": "none"}, {"enable_thinking": False}),
        ({"reasoning_effort": "minimal"}, {"enable_thinking": False}),
        ({"reasoning_effort": "low"}, {"enable_thinking": True}),
        ({"reasoning_effort": "high"}, {"enable_thinking": True}),
        (
            {"chat_template_kwargs": {"foo": 1}, "reasoning_effort": "medium"},
            {"foo": 1, "enable_thinking": True},
        ),
    ],
)
def test_thinking_switch_on_chat(extra: dict[str, Any], kwargs: dict[str, Any]) -> None:
    assert parse_chat(chat(**extra)).chat_template_kwargs == kwargs


def test_thinking_switch_on_responses() -> None:
    off = parse_responses(responses(reasoning={"effort": "none", "summary": "auto"}))
    assert off.chat.chat_template_kwargs == {"enable_thinking": False}
    assert off.echo["reasoning"] == {"effort": "none", "summary": None}
    on = parse_responses(responses(reasoning={"effort": "high"}, enable_thinking=False))
    assert on.chat.chat_template_kwargs == {"enable_thinking": False}
    assert parse_responses(responses(reasoning={})).chat.chat_template_kwargs == {}


@pytest.mark.parametrize(
    "fn,body,param",
    [
        (parse_chat, chat(reasoning_effort="extreme"), "reasoning_effort"),
        (parse_chat, chat(enable_thinking="yes"), "enable_thinking"),
        (
            parse_chat,
            chat(chat_template_kwargs={"enable_thinking": 1}),
            "chat_template_kwargs.enable_thinking",
        ),
        (parse_responses, responses(reasoning={"effort": 3}), "reasoning.effort"),
        (parse_responses, responses(max_tool_calls=0), "max_tool_calls"),
    ],
)
def test_thinking_switch_invalid_values(fn: Any, body: dict[str, Any], param: str) -> None:
    e = refused(fn, body)
    assert (e.code, e.param) == ("invalid_value", param)
    assert e.message.startswith(f"'{param}' must be")


# -- parallel_tool_calls: false -----------------------------------------------------------------


def test_one_call_when_parallel_calls_are_off() -> None:
    text = '<tool_call>{"name":"a"}</tool_call>\n<tool_call>{"name":"b"}</tool_call>\nDone.'
    single = OutputParser(False, False, True, max_calls=1)
    single.feed(text)
    single.finish()
    both = OutputParser(False, False, True)
    both.feed(text)
    both.finish()
    assert [c.name for c in single.tool_calls] == ["a"]
    assert [c.name for c in both.tool_calls] == ["a", "b"]
    assert single.content == both.content == "\nDone." and single.finish_reason == "tool_calls"
