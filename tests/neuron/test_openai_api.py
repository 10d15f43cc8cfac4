# ruff: noqa: E501  (exact wire shapes are pinned on one line each)
"""Chat, completions and embeddings shaping on the neuron.

Pins the exact error codes, params and messages, the reply objects, and the SSE frames byte for
byte; the built objects are also validated against the official `openai` SDK's types.
"""

from __future__ import annotations

import base64
import re
import struct
from typing import Any

import orjson
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from helexa.neuron.errors import model_unloaded, worker_crashed
from helexa.neuron.openai.chat import ChatStream, chat_completion, parse_chat
from helexa.neuron.openai.common import (
    Limits,
    Sampling,
    check_prompt,
    clamp_max_tokens,
    context_length_exceeded,
    embedding_only,
    no_chat_template,
)
from helexa.neuron.openai.completions import CompletionStream, completion, parse_completion
from helexa.neuron.openai.embeddings import (
    check_dimensions,
    embeddings_reply,
    parse_embeddings,
)
from helexa.neuron.openai.replies import Usage
from helexa.neuron.parse import ContentDelta, OutputParser, ReasoningDelta, ToolCall
from helexa.wire.errors import ApiError
from helexa.wire.sse import SSEDecoder, error_frame

MODEL = "Qwen/Qwen3-8B"
USER = [{"role": "user", "content": "hi"}]


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": USER, **extra}


def err(fn: Any, *args: Any, **kw: Any) -> ApiError:
    with pytest.raises(ApiError) as e:
        fn(*args, **kw)
    return e.value


def assert_err(e: ApiError, status: int, code: str, param: str | None, message: str) -> None:
    assert (e.status, e.code, e.param, e.message) == (status, code, param, message)
    assert e.type == ("invalid_request_error" if status < 500 else "api_error")


def frames(raw: bytes) -> list[Any]:
    """`data:` payloads, JSON-decoded ("[DONE]" kept as a string)."""
    assert raw.endswith(b"\n\n")
    out = []
    for name, data in SSEDecoder().feed(raw):
        assert name is None
        out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


# -- model field --------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [{}, {"model": ""}, {"model": 3}, {"model": None}])
def test_missing_model(body: dict[str, Any]) -> None:
    for fn in (parse_chat, parse_completion, parse_embeddings):
        e = err(fn, {**body, "messages": USER, "prompt": "x", "input": "x"})
        assert_err(e, 400, "missing_model_field", None, "missing 'model' field in request body")


# -- chat validation ----------------------------------------------------------------------------


def test_chat_defaults() -> None:
    r = parse_chat(chat())
    assert r.model == MODEL and r.messages == USER
    assert r.tools is None and not r.parse_tools and r.tool_choice is None
    assert r.sampling == Sampling() and r.sampling.to_wire() == {}
    assert (r.stop, r.max_tokens, r.stream, r.chat_template_kwargs) == ([], None, False, {})


def test_chat_all_fields() -> None:
    tools = [{"type": "function", "function": {"name": "Read", "parameters": {"type": "object"}}}]
    r = parse_chat(
        chat(
            temperature=0,
            top_p=1,
            top_k=-1,
            min_p=0.05,
            repetition_penalty=1.1,
            presence_penalty=-2,
            frequency_penalty=2,
            seed=2**64 - 1,
            stop=["\n\n", "", "END"],
            max_tokens=50,
            max_completion_tokens=20,
            stream=True,
            stream_options={"include_usage": False},
            chat_template_kwargs={"enable_thinking": False},
            tools=tools,
            tool_choice="auto",
            parallel_tool_calls=False,
            n=1,
            logprobs=False,
            response_format={"type": "text"},
            user="u",
            metadata={"a": 1},
        )
    )
    assert r.sampling.to_wire() == {
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "presence_penalty": -2.0,
        "frequency_penalty": 2.0,
        "seed": 2**64 - 1,
    }
    assert r.stop == ["\n\n", "END"] and r.max_tokens == 20 and r.stream
    assert r.chat_template_kwargs == {"enable_thinking": False}
    assert r.tools == tools and r.parse_tools and r.tool_choice == "auto"
    assert r.include_usage is False
    assert r.parallel_tool_calls is False


def test_null_fields_are_absent() -> None:
    keys = ["temperature", "top_p", "top_k", "seed", "stop", "max_tokens", "stream", "tools", "n"]
    r = parse_chat(chat(**dict.fromkeys(keys)))
    assert r.sampling.to_wire() == {} and r.stop == [] and r.tools is None


def test_stop_string() -> None:
    assert parse_chat(chat(stop="###")).stop == ["###"]
    assert parse_chat(chat(stop="")).stop == []
    assert parse_chat(chat(stop=["a"] * 16)).stop == ["a"] * 16


@pytest.mark.parametrize(
    "field,value,problem",
    [
        ("temperature", 2.5, "must be a number between 0 and 2"),
        ("temperature", -0.1, "must be a number between 0 and 2"),
        ("temperature", "hot", "must be a number between 0 and 2"),
        ("temperature", True, "must be a number between 0 and 2"),
        ("top_p", 0, "must be a number greater than 0 and at most 1"),
        ("top_p", 1.01, "must be a number greater than 0 and at most 1"),
        ("top_k", -2, "must be an integer >= 0 (0 turns it off)"),
        ("top_k", 1.5, "must be an integer >= 0 (0 turns it off)"),
        ("min_p", 1.5, "must be a number between 0 and 1"),
        ("repetition_penalty", 0, "must be a number greater than 0"),
        ("presence_penalty", 2.1, "must be a number between -2 and 2"),
        ("frequency_penalty", -3, "must be a number between -2 and 2"),
        ("seed", "42", "must be an integer"),
        ("seed", 2**64, "must be an integer"),
        ("seed", False, "must be an integer"),
        ("max_tokens", 0, "must be an integer >= 1"),
        ("max_tokens", 1.0, "must be an integer >= 1"),
        ("max_completion_tokens", -5, "must be an integer >= 1"),
        ("stream", "yes", "must be a boolean"),
        ("stop", ["a"] * 17, "must be a string or an array of at most 16 strings"),
        ("stop", [1], "must be a string or an array of at most 16 strings"),
        ("stop", 5, "must be a string or an array of at most 16 strings"),
        ("chat_template_kwargs", [], "must be an object"),
        ("parallel_tool_calls", "no", "must be a boolean"),
        ("n", "2", "must be an integer"),
        ("tools", {}, "must be an array"),
        ("messages", [], "must be a non-empty array"),
        ("messages", "hi", "must be a non-empty array"),
    ],
)
def test_chat_invalid_value(field: str, value: Any, problem: str) -> None:
    e = err(parse_chat, chat(**{field: value}))
    assert_err(e, 400, "invalid_value", field, f"'{field}' {problem}")
    assert orjson.loads(e.openai_body()) == {
        "error": {
            "message": f"'{field}' {problem}",
            "type": "invalid_request_error",
            "code": "invalid_value",
            "param": field,
        }
    }


@pytest.mark.parametrize(
    "messages,param,problem",
    [
        (["hi"], "messages[0]", "must be an object"),
        (
            [{"role": "bot", "content": "x"}],
            "messages[0].role",
            "must be one of system, developer, user, assistant, tool",
        ),
        (
            [{"role": "user"}],
            "messages[0].content",
            "must be a string or an array of content parts",
        ),
        (
            [{"role": "user", "content": 3}],
            "messages[0].content",
            "must be a string or an array of content parts",
        ),
        (
            [{"role": "user", "content": [{"text": "x"}]}],
            "messages[0].content[0]",
            "must be an object with a 'type'",
        ),
        (
            [{"role": "user", "content": [{"type": "text"}]}],
            "messages[0].content[0].text",
            "must be a string",
        ),
        (
            [{"role": "user", "content": [{"type": "video"}]}],
            "messages[0].content[0].type",
            "must be one of text, image_url",
        ),
        (
            [{"role": "system", "content": [{"type": "refusal"}]}],
            "messages[0].content[0].type",
            "must be one of text",
        ),
        (
            [{"role": "assistant", "content": None, "tool_calls": {}}],
            "messages[0].tool_calls",
            "must be an array",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"id": "c"}]}],
            "messages[0].tool_calls[0].function",
            "must be an object",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}],
            "messages[0].tool_calls[0].function.name",
            "must be a non-empty string",
        ),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}],
                }
            ],
            "messages[0].tool_calls[0].function.arguments",
            "must be a JSON object or a string holding one",
        ),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}],
                }
            ],
            "messages[0].tool_calls[0].function.arguments",
            "must be a JSON object or a string holding one",
        ),
        (
            [{"role": "assistant", "content": "x", "reasoning_content": 1}],
            "messages[0].reasoning_content",
            "must be a string",
        ),
        (
            [{"role": "tool", "content": "x", "tool_call_id": 7}],
            "messages[0].tool_call_id",
            "must be a string",
        ),
    ],
)
def test_message_validation(messages: list[Any], param: str, problem: str) -> None:
    e = err(parse_chat, chat(messages=messages))
    assert_err(e, 400, "invalid_value", param, f"'{param}' {problem}")


def test_valid_conversation_passes_unchanged() -> None:
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "system", "content": [{"type": "text", "text": "sys"}]},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "thinking",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"x": 1}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "g", "arguments": {"y": 2}},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "ok"}]},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "done"}, {"type": "refusal", "refusal": "no"}],
        },
    ]
    assert parse_chat(chat(messages=messages)).messages == messages


@pytest.mark.parametrize(
    "extra,param,message",
    [
        ({"n": 2}, "n", "'n' other than 1 is not supported"),
        ({"n": 0}, "n", "'n' other than 1 is not supported"),
        ({"logprobs": True}, "logprobs", "'logprobs' is not supported"),
        ({"top_logprobs": 3}, "top_logprobs", "'top_logprobs' is not supported"),
        (
            {"tools": [{"type": "custom", "custom": {"name": "x"}}]},
            "tools",
            "tool type 'custom' is not supported; only 'function' tools are",
        ),
    ],
)
def test_chat_unsupported_parameter(extra: dict[str, Any], param: str, message: str) -> None:
    assert_err(err(parse_chat, chat(**extra)), 400, "unsupported_parameter", param, message)


def test_bad_response_format_is_invalid() -> None:
    e = err(parse_chat, chat(response_format={"type": "yaml"}))
    assert (e.code, e.param) == ("invalid_value", "response_format")


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def test_image_on_non_vision_model() -> None:
    msgs = [{"role": "user", "content": [{"type": "text", "text": "see"}, IMAGE]}]
    e = err(parse_chat, chat(messages=msgs))
    assert_err(e, 400, "unsupported_content", None, f"model '{MODEL}' does not accept image input")
    assert parse_chat(chat(messages=msgs), vision=True).messages == msgs


@pytest.mark.parametrize(
    "part,message",
    [
        (
            {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
            "audio input is not supported",
        ),
        ({"type": "file", "file": {"file_id": "f"}}, "file input is not supported"),
    ],
)
def test_audio_and_file_parts(part: dict[str, Any], message: str) -> None:
    e = err(parse_chat, chat(messages=[{"role": "user", "content": [part]}]), vision=True)
    assert_err(e, 400, "unsupported_content", None, message)


TOOLS = [{"type": "function", "function": {"name": "Read"}}]


@pytest.mark.parametrize(
    "tools,choice,parsed",
    [
        (TOOLS, None, True),
        (TOOLS, "auto", True),
        (TOOLS, "none", False),
        ([], "auto", False),
        (None, None, False),
    ],
)
def test_tool_choice_none_turns_tools_and_parsing_off(
    tools: Any, choice: Any, parsed: bool
) -> None:
    r = parse_chat(chat(tools=tools, tool_choice=choice))
    assert r.parse_tools is parsed
    assert r.tools == (TOOLS if parsed else None)
    assert r.tool_choice == choice


@pytest.mark.parametrize(
    "tools,param,problem",
    [
        ([3], "tools[0]", "must be an object"),
        ([{"type": "function"}], "tools[0].function", "must be an object"),
        (
            [{"type": "function", "function": {"name": ""}}],
            "tools[0].function.name",
            "must be a non-empty string",
        ),
        (
            [{"type": "function", "function": {"name": "a", "parameters": []}}],
            "tools[0].function.parameters",
            "must be an object",
        ),
    ],
)
def test_tools_validation(tools: Any, param: str, problem: str) -> None:
    assert_err(
        err(parse_chat, chat(tools=tools)), 400, "invalid_value", param, f"'{param}' {problem}"
    )


@pytest.mark.parametrize("choice", ["any", 3, {"name": "Read"}])
def test_bad_tool_choice(choice: Any) -> None:
    e = err(parse_chat, chat(tools=TOOLS, tool_choice=choice))
    assert_err(
        e,
        400,
        "invalid_value",
        "tool_choice",
        "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", ...}"
        " naming a tool",
    )


@pytest.mark.parametrize(
    "choice,named",
    [("required", None), ({"type": "function", "function": {"name": "Read"}}, "Read")],
)
def test_forced_tool_choice_is_constrained(choice: Any, named: str | None) -> None:
    r = parse_chat(chat(tools=TOOLS, tool_choice=choice))
    assert (r.tool_choice, r.named_tool, r.constrained) == ("required", named, True)
    assert r.grammar_tools() == [(0, TOOLS[0])]
    assert r.call_limit == (1 if named else None)


@pytest.mark.parametrize(
    "tools,choice,message",
    [
        (TOOLS, {"type": "function"}, "'tool_choice' must name the function to call"),
        (
            TOOLS,
            {"type": "function", "function": {"name": "Write"}},
            "'tool_choice' names function 'Write', which is not in 'tools'",
        ),
        (None, "required", "'tool_choice' 'required' needs at least one tool in 'tools'"),
    ],
)
def test_forced_tool_choice_needs_its_tool(tools: Any, choice: Any, message: str) -> None:
    e = err(parse_chat, chat(tools=tools, tool_choice=choice))
    assert_err(e, 400, "invalid_value", "tool_choice", message)


# -- caps ---------------------------------------------------------------------------------------

LIMITS = Limits(context=24576, output=8192, max_prompt_tokens=16384)


def test_context_length_exceeded_shape() -> None:
    check_prompt(16384, LIMITS)
    e = err(check_prompt, 16385, LIMITS)
    assert_err(
        e,
        400,
        "context_length_exceeded",
        None,
        "prompt is 16385 tokens; this neuron accepts at most 16384",
    )
    assert e.retry_after is None and e.headers() == {}
    assert e.openai_body() == (
        b'{"error":{"message":"prompt is 16385 tokens; this neuron accepts at most 16384",'
        b'"type":"invalid_request_error","code":"context_length_exceeded","param":null,'
        b'"prompt_len":16385,"max":16384}}'
    )
    assert context_length_exceeded(5, 4).extras == {"prompt_len": 5, "max": 4}


def test_prompt_cap_leaves_room_for_one_token_on_a_short_model() -> None:
    small = Limits(context=4096, output=4096, max_prompt_tokens=16384)
    assert small.max_prompt == 4095
    check_prompt(4095, small)
    assert err(check_prompt, 4096, small).extras == {"prompt_len": 4096, "max": 4095}


def test_output_clamp() -> None:
    assert clamp_max_tokens(None, 100, LIMITS) == 8192
    assert clamp_max_tokens(10**9, 100, LIMITS) == 8192
    assert clamp_max_tokens(50, 100, LIMITS) == 50
    assert clamp_max_tokens(None, 20000, LIMITS) == 4576  # context − prompt
    assert clamp_max_tokens(None, 100, LIMITS, default=16) == 16  # completions
    assert clamp_max_tokens(None, 24570, LIMITS, default=16) == 6
    assert clamp_max_tokens(None, 24575, LIMITS) == 1


# -- chat replies -------------------------------------------------------------------------------


def parsed(text: str, cap: bool = False, tools: bool = True, start: bool = False) -> OutputParser:
    n = iter(range(100))
    p = OutputParser(True, start, tools, new_call_id=lambda: f"call_{next(n)}")
    p.feed(text, 1)
    p.finish(cap)
    return p


def test_chat_completion_text_and_reasoning() -> None:
    p = parsed("<think>The user greets me.</think>\n\nHello!")
    body = chat_completion(MODEL, p, Usage(12, 9, 5), id="chatcmpl-x", created=1763800000)
    assert body == {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1763800000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello!",
                    "reasoning_content": "The user greets me.",
                },
                "finish_reason": "stop",
                "stop_reason": None,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 9,
            "total_tokens": 21,
            "completion_tokens_details": {"reasoning_tokens": 5},
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }
    ChatCompletion.model_validate(body)


def test_chat_completion_defaults_id_and_created() -> None:
    body = chat_completion(MODEL, parsed("hi"), Usage(1, 1))
    assert re.fullmatch(r"chatcmpl-[A-Za-z0-9]{24}", body["id"])
    assert isinstance(body["created"], int) and body["created"] > 1_700_000_000
    msg = body["choices"][0]["message"]
    assert msg == {"role": "assistant", "content": "hi"}  # no reasoning_content, no tool_calls


def test_chat_completion_tool_calls_content_null() -> None:
    p = parsed('<tool_call>{"name":"Read","arguments":{"path":"/etc/hosts"}}</tool_call>\n')
    body = chat_completion(MODEL, p, Usage(3, 4))
    choice = body["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "Read", "arguments": '{"path":"/etc/hosts"}'},
            }
        ],
    }
    assert choice["finish_reason"] == "tool_calls"
    ChatCompletion.model_validate(body)


def test_chat_completion_tool_calls_with_text_and_length() -> None:
    p = parsed('Let me check.\n<tool_call>{"name":"f"}</tool_call>', cap=True)
    choice = chat_completion(MODEL, p, Usage(3, 4))["choices"][0]
    assert choice["message"]["content"] == "Let me check.\n"
    assert len(choice["message"]["tool_calls"]) == 1
    assert choice["finish_reason"] == "length"


def test_chat_completion_stop_reason_and_empty_content() -> None:
    choice = chat_completion(MODEL, parsed(""), Usage(3, 0), "###")["choices"][0]
    assert choice["message"]["content"] == "" and choice["stop_reason"] == "###"
    capped = chat_completion(MODEL, parsed("<think>still thinking", cap=True), Usage(3, 5))
    msg = capped["choices"][0]["message"]
    assert msg == {"role": "assistant", "content": "", "reasoning_content": "still thinking"}
    assert capped["choices"][0]["finish_reason"] == "length"


HEAD = '"id":"chatcmpl-s","object":"chat.completion.chunk","created":7,"model":"Qwen/Qwen3-8B"'


def test_chat_stream_frames_exact() -> None:
    s = ChatStream(MODEL, id="chatcmpl-s", created=7)
    assert (
        s.first()
        == b"data: {"
        + HEAD.encode()
        + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    )
    raw = s.events(
        [
            ReasoningDelta("hmm"),
            ContentDelta("Hi"),
            ToolCall(0, "call_a", "Read", '{"p":1}'),
        ]
    )
    assert raw == (
        b"data: {"
        + HEAD.encode()
        + b',"choices":[{"index":0,"delta":{"reasoning_content":"hmm"},"finish_reason":null}]}\n\n'
        b"data: {"
        + HEAD.encode()
        + b',"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
        b"data: {"
        + HEAD.encode()
        + b',"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"Read","arguments":""}}]},"finish_reason":null}]}\n\n'
        b"data: {"
        + HEAD.encode()
        + b',"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"p\\":1}"}}]},"finish_reason":null}]}\n\n'
    )
    assert (
        s.final("tool_calls")
        == b"data: {"
        + HEAD.encode()
        + b',"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls","stop_reason":null}]}\n\n'
    )
    # no `stream_options.include_usage`: no usage chunk, and no `usage` key anywhere (OpenAI's)
    assert s.usage(Usage(12, 9, 5)) == b""
    assert s.end("stop", "###", Usage(1, 2)) == s.final("stop", "###") + b"data: [DONE]\n\n"
    assert s.events([]) == b""


def test_chat_stream_usage_only_when_asked() -> None:
    """With `include_usage`: the chunks as without it (no `usage` key: cortex finds the usage
    chunk by that key), then a chunk with `choices: []` and the usage, then `[DONE]`."""
    s = ChatStream(MODEL, include_usage=True, id="chatcmpl-s", created=7)
    plain = ChatStream(MODEL, id="chatcmpl-s", created=7)
    assert s.first() == plain.first()
    assert s.events([ContentDelta("Hi")]) == plain.events([ContentDelta("Hi")])
    usage = (
        b"data: {"
        + HEAD.encode()
        + b',"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21,'
        b'"completion_tokens_details":{"reasoning_tokens":5},"prompt_tokens_details":{"cached_tokens":0}}}\n\n'
    )
    assert s.usage(Usage(12, 9, 5)) == usage
    assert s.end("stop", None, Usage(12, 9, 5)) == s.final("stop") + usage + b"data: [DONE]\n\n"
    chunks = frames(s.first() + s.events([ContentDelta("Hi")]) + s.end("stop", None, Usage(1, 2)))
    for c in chunks[:-1]:
        ChatCompletionChunk.model_validate(c)
    assert ["usage" in c for c in chunks[:-1]] == [False, False, False, True]
    assert chunks[-2]["usage"]["total_tokens"] == 3 and chunks[-2]["choices"] == []


def test_chat_stream_grammar_from_a_parse() -> None:
    """A streamed parse: first, reasoning*, (text | head args)*, final, usage, [DONE]; the SDK
    accepts every chunk, and accumulating the deltas gives the non-streaming message."""
    text = '<think>why</think>\n\nOK. <tool_call>{"name":"a","arguments":{"x":1}}</tool_call>\n<tool_call>{"name":"b"}</tool_call>\n'
    n = iter(range(100))
    p = OutputParser(True, False, True, new_call_id=lambda: f"call_{next(n)}")
    s = ChatStream(MODEL, include_usage=True)
    raw = s.first()
    for ch in text:
        raw += s.events(p.feed(ch, 1))
    raw += s.events(p.finish(False))
    raw += s.end(p.finish_reason, None, Usage(10, len(text), p.reasoning_tokens))
    got = frames(raw)
    assert got[-1] == "[DONE]"
    chunks = got[:-1]
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
        assert c["id"] == s.id and c["object"] == "chat.completion.chunk" and c["model"] == MODEL
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert (
        chunks[-1]["choices"] == []
        and chunks[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"]
        == p.reasoning_tokens
    )
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    reasoning = content = ""
    calls: dict[int, dict[str, str]] = {}
    kinds = []
    for c in chunks[1:-2]:
        d = c["choices"][0]["delta"]
        assert c["choices"][0]["finish_reason"] is None
        reasoning += d.get("reasoning_content", "")
        content += d.get("content", "")
        for tc in d.get("tool_calls", []):
            if "id" in tc:
                kinds.append("head")
                calls[tc["index"]] = {
                    "id": tc["id"],
                    "name": tc["function"]["name"],
                    "arguments": "",
                }
            else:
                kinds.append("args")
            calls[tc["index"]]["arguments"] += tc["function"]["arguments"]
    assert (reasoning, content) == ("why", "OK. ")
    assert kinds == ["head", "args", "head", "args"]
    assert calls == {
        0: {"id": "call_0", "name": "a", "arguments": '{"x":1}'},
        1: {"id": "call_1", "name": "b", "arguments": "{}"},
    }


def test_mid_stream_error_frames() -> None:
    assert error_frame(worker_crashed(MODEL)) == (
        b'data: {"error":{"message":"model worker for \'Qwen/Qwen3-8B\' crashed during the request; it is being restarted",'
        b'"type":"api_error","code":"worker_crashed","param":null}}\n\ndata: [DONE]\n\n'
    )
    assert error_frame(model_unloaded(MODEL)) == (
        b'data: {"error":{"message":"model \'Qwen/Qwen3-8B\' was unloaded","type":"api_error",'
        b'"code":"model_unloaded","param":null}}\n\ndata: [DONE]\n\n'
    )
    for e in (worker_crashed(MODEL), model_unloaded(MODEL)):
        assert e.status == 503 and e.headers() == {"Retry-After": "2"}


def test_capability_errors() -> None:
    assert_err(
        no_chat_template(MODEL),
        400,
        "unsupported_model_capability",
        None,
        f"model '{MODEL}' has no chat template; use /v1/completions",
    )
    assert embedding_only("a/e").code == "unsupported_model_capability"


# -- completions --------------------------------------------------------------------------------


def test_parse_completion() -> None:
    r = parse_completion(
        {
            "model": MODEL,
            "prompt": "Once",
            "max_tokens": 5,
            "stop": "\n",
            "seed": 1,
            "temperature": 0.5,
            "stream": True,
            "echo": False,
            "suffix": None,
        }
    )
    assert (r.model, r.prompt, r.max_tokens, r.stop, r.stream) == (MODEL, "Once", 5, ["\n"], True)
    assert r.sampling.to_wire() == {"temperature": 0.5, "seed": 1}
    one = parse_completion({"model": MODEL, "prompt": ["only"]})
    assert one.prompt == "only" and one.max_tokens is None and not one.stream


@pytest.mark.parametrize(
    "extra,code,param,message",
    [
        (
            {"prompt": ["a", "b"]},
            "unsupported_parameter",
            "prompt",
            "'prompt' with more than one string is not supported",
        ),
        ({"echo": True}, "unsupported_parameter", "echo", "'echo' is not supported"),
        ({"suffix": "end"}, "unsupported_parameter", "suffix", "'suffix' is not supported"),
        ({"n": 3}, "unsupported_parameter", "n", "'n' other than 1 is not supported"),
        (
            {"best_of": 2},
            "unsupported_parameter",
            "best_of",
            "'best_of' other than 1 is not supported",
        ),
        ({"logprobs": 2}, "unsupported_parameter", "logprobs", "'logprobs' is not supported"),
        (
            {"prompt": [1, 2, 3]},
            "invalid_value",
            "prompt",
            "'prompt' must be a string or an array of one string",
        ),
        (
            {"prompt": []},
            "invalid_value",
            "prompt",
            "'prompt' must be a string or an array of one string",
        ),
        (
            {"prompt": None},
            "invalid_value",
            "prompt",
            "'prompt' must be a string or an array of one string",
        ),
        ({"max_tokens": 0}, "invalid_value", "max_tokens", "'max_tokens' must be an integer >= 1"),
    ],
)
def test_completion_errors(extra: dict[str, Any], code: str, param: str, message: str) -> None:
    body = {"model": MODEL, "prompt": "x", **extra}
    assert_err(err(parse_completion, body), 400, code, param, message)


def test_completion_reply_and_stream() -> None:
    body = completion(MODEL, " upon a time", "length", Usage(2, 16), id="cmpl-x", created=5)
    assert body == {
        "id": "cmpl-x",
        "object": "text_completion",
        "created": 5,
        "model": MODEL,
        "choices": [
            {"index": 0, "text": " upon a time", "logprobs": None, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 16, "total_tokens": 18},
    }
    Completion.model_validate(body)
    assert re.fullmatch(r"cmpl-[A-Za-z0-9]{24}", completion(MODEL, "", "stop", Usage(1, 0))["id"])
    s = CompletionStream(MODEL, id="cmpl-s", created=5)
    head = b'data: {"id":"cmpl-s","object":"text_completion","created":5,"model":"Qwen/Qwen3-8B","choices":'
    assert (
        s.text(" upon")
        == head + b'[{"index":0,"text":" upon","logprobs":null,"finish_reason":null}]}\n\n'
    )
    assert s.end("stop", Usage(2, 1)) == (
        head
        + b'[{"index":0,"text":"","logprobs":null,"finish_reason":"stop"}]}\n\n'
        + b"data: [DONE]\n\n"
    )
    asked = CompletionStream(MODEL, include_usage=True, id="cmpl-s", created=5)
    assert asked.end("stop", Usage(2, 1)) == (
        head
        + b'[{"index":0,"text":"","logprobs":null,"finish_reason":"stop"}]}\n\n'
        + head
        + b'[],"usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}}\n\n'
        + b"data: [DONE]\n\n"
    )
    # the SDK's type insists on a finish_reason (it never validates stream chunks): the last two
    for f in frames(asked.text("a") + asked.end("stop", Usage(2, 1)))[-3:-1]:
        Completion.model_validate(f)


# -- embeddings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,inputs,tokenized",
    [
        ("hello", ["hello"], False),
        (["a", "b"], ["a", "b"], False),
        ([1, 2, 3], [[1, 2, 3]], True),
        ([[1], [2, 3]], [[1], [2, 3]], True),
        (["x"] * 2048, ["x"] * 2048, False),
    ],
)
def test_embedding_input_forms(value: Any, inputs: Any, tokenized: bool) -> None:
    r = parse_embeddings({"model": MODEL, "input": value, "user": "ignored"})
    assert r.inputs == inputs and r.tokenized is tokenized
    assert (r.encoding_format, r.dimensions) == ("float", None)


@pytest.mark.parametrize(
    "extra,param,problem",
    [
        ({"input": ["x"] * 2049}, "input", "must have at most 2048 items"),
        ({"input": []}, "input", "must not be empty"),
        ({"input": ["a", ""]}, "input", "must not contain empty strings"),
        ({"input": ""}, "input", "must not contain empty strings"),
        (
            {"input": None},
            "input",
            "must be a string, an array of strings, an array of token ids or an array of such arrays",
        ),
        (
            {"input": ["a", [1]]},
            "input",
            "must be a string, an array of strings, an array of token ids or an array of such arrays",
        ),
        (
            {"input": [[1], []]},
            "input",
            "must be a string, an array of strings, an array of token ids or an array of such arrays",
        ),
        (
            {"input": [-1]},
            "input",
            "must be a string, an array of strings, an array of token ids or an array of such arrays",
        ),
        (
            {"input": [True]},
            "input",
            "must be a string, an array of strings, an array of token ids or an array of such arrays",
        ),
        ({"encoding_format": "int8"}, "encoding_format", "must be 'float' or 'base64'"),
        ({"dimensions": 0}, "dimensions", "must be an integer >= 1"),
    ],
)
def test_embedding_errors(extra: dict[str, Any], param: str, problem: str) -> None:
    body = {"model": MODEL, "input": "x", **extra}
    assert_err(err(parse_embeddings, body), 400, "invalid_value", param, f"'{param}' {problem}")


def test_embeddings_reply_float_and_base64_agree() -> None:
    vectors = [[0.1, -0.25, 3.0], [1e-3, 0.0, -1.0]]
    f = embeddings_reply(MODEL, vectors, 7)
    assert f == {
        "object": "list",
        "data": [
            {"object": "embedding", "index": 0, "embedding": vectors[0]},
            {"object": "embedding", "index": 1, "embedding": vectors[1]},
        ],
        "model": MODEL,
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    CreateEmbeddingResponse.model_validate(f)
    b = embeddings_reply(MODEL, vectors, 7, "base64", dimensions=3)
    for item, v in zip(b["data"], vectors, strict=True):
        raw = base64.b64decode(item["embedding"])
        assert len(raw) == 4 * len(v)
        got = struct.unpack(f"<{len(v)}f", raw)
        assert got == pytest.approx(v, rel=1e-6)
        assert got == struct.unpack(f"<{len(v)}f", struct.pack(f"<{len(v)}f", *v))  # exact f32


def test_dimensions_must_match_native() -> None:
    check_dimensions(None, 1024)
    check_dimensions(1024, 1024)
    e = err(check_dimensions, 256, 1024)
    assert_err(
        e,
        400,
        "unsupported_parameter",
        "dimensions",
        "'dimensions' other than the model's native size (1024) is not supported",
    )
    with pytest.raises(ApiError):
        embeddings_reply(MODEL, [[0.0, 1.0]], 1, dimensions=3)
