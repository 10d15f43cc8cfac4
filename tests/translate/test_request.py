"""Anthropic Messages request → OpenAI chat request: every mapping rule."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from helexa.translate.request import TranslationError, anthropic_fields, translate_request


def body(**over: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "model": "test-model",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    b.update(over)
    return b


def msgs(**over: Any) -> list[dict[str, Any]]:
    return translate_request(body(**over))["messages"]


def rejects(b: dict[str, Any], *fragments: str, count_tokens: bool = False) -> str:
    with pytest.raises(TranslationError) as exc:
        translate_request(b, count_tokens=count_tokens)
    for f in fragments:
        assert f in str(exc.value)
    return str(exc.value)


# -- minimal body, model, max_tokens -----------------------------------------------------------


def test_minimal_body_maps_model_max_tokens_and_one_user_string() -> None:
    out = translate_request(body())
    assert out == {
        "model": "test-model",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }


def test_translation_does_not_mutate_the_input() -> None:
    b = body(
        system=[{"type": "text", "text": "s"}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "a"}]},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
        ],
        tools=[{"name": "Read", "input_schema": {"type": "object"}}],
    )
    before = copy.deepcopy(b)
    translate_request(b)
    assert b == before


@pytest.mark.parametrize("bad", [None, 0, 1.5, True, "64", -3])
def test_max_tokens_required_integer_at_least_one(bad: Any) -> None:
    b = body()
    if bad is None:
        del b["max_tokens"]
    else:
        b["max_tokens"] = bad
    rejects(b, "max_tokens")


def test_max_tokens_zero_is_rejected_and_one_accepted() -> None:
    rejects(body(max_tokens=0), "max_tokens")
    assert translate_request(body(max_tokens=1))["max_tokens"] == 1


@pytest.mark.parametrize("bad", [None, "", 7, ["m"]])
def test_model_must_be_a_non_empty_string(bad: Any) -> None:
    b = body()
    if bad is None:
        del b["model"]
    else:
        b["model"] = bad
    rejects(b, "model")


@pytest.mark.parametrize("bad", [None, [], "hi", {"role": "user"}])
def test_messages_must_be_a_non_empty_array(bad: Any) -> None:
    b = body()
    if bad is None:
        del b["messages"]
    else:
        b["messages"] = bad
    rejects(b, "messages")


@pytest.mark.parametrize(
    "message",
    [
        {"role": "system", "content": "x"},
        {"role": "tool", "content": "x"},
        {"content": "x"},
        {"role": "user"},
        {"role": "user", "content": 5},
        {"role": "user", "content": [{"text": "no type"}]},
        {"role": "user", "content": ["bare string"]},
        "not an object",
    ],
)
def test_malformed_messages_are_rejected(message: Any) -> None:
    rejects(body(messages=[message]))


def test_metadata_and_unknown_fields_are_tolerated_and_dropped() -> None:
    out = translate_request(
        body(
            metadata={"user_id": "u-1"},
            service_tier="auto",
            container="c",
            mcp_servers=[],
            context_management={"edits": []},
            cache_control={"type": "ephemeral"},
            some_future_field={"x": 1},
        )
    )
    assert set(out) == {"model", "max_tokens", "messages"}


def test_cache_control_on_blocks_and_tools_is_dropped() -> None:
    out = translate_request(
        body(
            system=[{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}}
                    ],
                }
            ],
            tools=[
                {
                    "name": "Read",
                    "input_schema": {"type": "object"},
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        )
    )
    assert "cache_control" not in str(out)


# -- system ------------------------------------------------------------------------------------


def test_system_string_becomes_the_first_message() -> None:
    assert msgs(system="You are terse.") == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
    ]


def test_system_text_blocks_join_with_blank_line() -> None:
    out = msgs(system=[{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}])
    assert out[0] == {"role": "system", "content": "One.\n\nTwo."}
    assert out[1]["role"] == "user"


def test_system_absent_or_null_adds_no_message() -> None:
    assert msgs(system=None)[0]["role"] == "user"
    assert msgs()[0]["role"] == "user"


@pytest.mark.parametrize(
    "system",
    [
        [{"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}],
        [{"type": "text"}],
        ["plain string in a list"],
        42,
        {"type": "text", "text": "an object, not an array"},
    ],
)
def test_system_other_block_types_or_shapes_are_rejected(system: Any) -> None:
    rejects(body(system=system), "system")


def test_claude_code_billing_header_block_is_dropped_from_the_system_prompt() -> None:
    system = [
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.332.9ea;"},
        {"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}},
    ]
    assert msgs(system=system)[0] == {"role": "system", "content": "You are an agent."}


# -- role: "system" messages (Claude Code sends one after the first user turn) ----------------


CLAUDE_CODE_TURNS: list[dict[str, Any]] = [
    {
        "role": "user",
        "content": [{"type": "text", "text": "<reminder>"}, {"type": "text", "text": "go"}],
    },
    {
        "role": "system",
        "content": [
            {"type": "text", "text": "# Environment", "cache_control": {"type": "ephemeral"}}
        ],
    },
    {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}],
    },
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
]


def test_late_system_message_stays_in_place_as_a_system_turn() -> None:
    out = msgs(system="Top.", messages=CLAUDE_CODE_TURNS)
    assert [m["role"] for m in out] == ["system", "user", "system", "assistant", "tool"]
    assert out[0]["content"] == "Top."
    assert out[2] == {"role": "system", "content": "# Environment"}


def test_late_system_string_content_and_consecutive_system_turns_merge() -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "a"},
            {"role": "system", "content": "one"},
            {"role": "system", "content": [{"type": "text", "text": "two"}]},
            {"role": "user", "content": "b"},
        ]
    )
    assert out == [
        {"role": "user", "content": "a"},
        {"role": "system", "content": "one\n\ntwo"},
        {"role": "user", "content": "b"},
    ]


def test_system_messages_before_the_first_turn_join_the_system_prompt() -> None:
    out = msgs(
        system="Top.",
        messages=[{"role": "system", "content": "More."}, {"role": "user", "content": "hi"}],
    )
    assert out == [
        {"role": "system", "content": "Top.\n\nMore."},
        {"role": "user", "content": "hi"},
    ]
    lone = msgs(messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}])
    assert lone[0] == {"role": "system", "content": "S"}


def test_system_only_conversation_is_rejected() -> None:
    rejects(body(messages=[{"role": "system", "content": "x"}]), "'user' or 'assistant'")


def test_non_text_system_message_blocks_are_refused_in_words_clients_fall_back_on() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}
    detail = rejects(
        body(messages=[{"role": "user", "content": "a"}, {"role": "system", "content": [image]}])
    )
    # Claude Code 2.1's test for "retry without system messages", verbatim.
    assert "not supported" in detail and re.search(r"role .{0,2}system", detail, re.IGNORECASE)


# -- user turns --------------------------------------------------------------------------------


def test_user_string_content() -> None:
    assert msgs(messages=[{"role": "user", "content": "plain"}]) == [
        {"role": "user", "content": "plain"}
    ]


def test_single_user_text_block_is_flattened_to_a_string() -> None:
    out = msgs(messages=[{"role": "user", "content": [{"type": "text", "text": "only"}]}])
    assert out == [{"role": "user", "content": "only"}]


def test_several_user_text_blocks_become_text_parts() -> None:
    out = msgs(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ]
    )
    assert out == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        }
    ]


def test_base64_image_becomes_data_url_part() -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
    }
    out = msgs(messages=[{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}])
    assert out == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                },
            ],
        }
    ]


def test_url_image_becomes_image_url_part_even_alone() -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    out = msgs(messages=[{"role": "user", "content": [image]}])
    assert out == [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}],
        }
    ]


@pytest.mark.parametrize(
    "source",
    [
        None,
        {"type": "base64", "media_type": "image/png"},
        {"type": "base64", "data": "xx"},
        {"type": "url"},
        {"type": "url", "url": ""},
        {"type": "file", "file_id": "f"},
    ],
)
def test_bad_image_sources_are_rejected(source: Any) -> None:
    block: dict[str, Any] = {"type": "image"}
    if source is not None:
        block["source"] = source
    rejects(body(messages=[{"role": "user", "content": [block]}]))


def test_unsupported_user_block_type_names_it() -> None:
    doc = {"type": "document", "source": {"type": "text", "data": "x"}}
    detail = rejects(body(messages=[{"role": "user", "content": [doc]}]))
    assert detail == "unsupported content block type 'document'"


def test_text_block_without_text_is_rejected() -> None:
    rejects(body(messages=[{"role": "user", "content": [{"type": "text"}]}]))


# -- tool_result -------------------------------------------------------------------------------


def test_tool_result_string_content_comes_before_the_rest_of_the_turn() -> None:
    out = msgs(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "here you go"},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "one"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "two"},
                ],
            }
        ]
    )
    assert out == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "one"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "two"},
        {"role": "user", "content": "here you go"},
    ]


def test_tool_result_block_content_joins_text_and_replaces_images() -> None:
    out = msgs(
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_9",
                        "content": [
                            {"type": "text", "text": "line 1"},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "x",
                                },
                            },
                            {"type": "text", "text": "line 2"},
                        ],
                    }
                ],
            }
        ]
    )
    assert out == [
        {"role": "tool", "tool_call_id": "toolu_9", "content": "line 1\n[image]\nline 2"}
    ]


def test_tool_reference_in_a_tool_result_says_the_tool_is_loaded() -> None:
    """Claude Code's ToolSearch answers with `tool_reference` blocks (and adds the tools)."""
    refs = [{"type": "tool_reference", "tool_name": n} for n in ("WebFetch", "WebSearch")]
    result = {"type": "tool_result", "tool_use_id": "t1", "content": refs}
    out = msgs(messages=[{"role": "user", "content": [result]}])
    assert out == [
        {
            "role": "tool",
            "tool_call_id": "t1",
            "content": "Tool loaded: WebFetch\nTool loaded: WebSearch",
        }
    ]
    bad = {**result, "content": [{"type": "tool_reference"}]}
    rejects(body(messages=[{"role": "user", "content": [bad]}]), "tool_name")


def test_tool_result_is_error_is_ignored_and_missing_content_is_empty() -> None:
    out = msgs(
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": "boom",
                        "is_error": True,
                    },
                    {"type": "tool_result", "tool_use_id": "t2"},
                ],
            }
        ]
    )
    assert out == [
        {"role": "tool", "tool_call_id": "t1", "content": "boom"},
        {"role": "tool", "tool_call_id": "t2", "content": ""},
    ]


@pytest.mark.parametrize(
    "block",
    [
        {"type": "tool_result", "content": "x"},
        {"type": "tool_result", "tool_use_id": "", "content": "x"},
        {"type": "tool_result", "tool_use_id": "t", "content": 5},
        {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document"}]},
    ],
)
def test_malformed_tool_results_are_rejected(block: dict[str, Any]) -> None:
    rejects(body(messages=[{"role": "user", "content": [block]}]))


# -- assistant turns ---------------------------------------------------------------------------


def test_assistant_string_content() -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ]
    )
    assert out[1] == {"role": "assistant", "content": "hello"}


def test_assistant_text_thinking_and_tool_use() -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "read it"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Need", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "thinking", "thinking": "the file.", "signature": "sig"},
                    {"type": "text", "text": "Reading"},
                    {"type": "text", "text": "it."},
                    {
                        "type": "tool_use",
                        "id": "toolu_42",
                        "name": "Read",
                        "input": {"path": "/etc/hosts", "n": [1, 2]},
                    },
                    {"type": "tool_use", "id": "toolu_43", "name": "Ls", "input": {}},
                ],
            },
        ]
    )
    assert out[1] == {
        "role": "assistant",
        "content": "Reading\nit.",
        "reasoning_content": "Need\nthe file.",
        "tool_calls": [
            {
                "id": "toolu_42",
                "type": "function",
                "function": {"name": "Read", "arguments": {"path": "/etc/hosts", "n": [1, 2]}},
            },
            {"id": "toolu_43", "type": "function", "function": {"name": "Ls", "arguments": {}}},
        ],
    }
    # The arguments stay an object: Qwen templates iterate over them.
    assert isinstance(out[1]["tool_calls"][0]["function"]["arguments"], dict)


def test_redacted_thinking_alone_adds_no_reasoning() -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "a"},
                ],
            },
        ]
    )
    assert out[1] == {"role": "assistant", "content": "a"}


def test_tool_use_without_input_gets_an_empty_object() -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Now"}]},
        ]
    )
    assert out[1]["tool_calls"][0]["function"]["arguments"] == {}


@pytest.mark.parametrize(
    "block",
    [
        {"type": "tool_use", "name": "Read", "input": {}},
        {"type": "tool_use", "id": "t", "input": {}},
        {"type": "tool_use", "id": "t", "name": "Read", "input": "{}"},
        {"type": "thinking"},
        {"type": "image", "source": {"type": "url", "url": "http://x"}},
        {"type": "tool_result", "tool_use_id": "t", "content": "x"},
    ],
)
def test_malformed_or_misplaced_assistant_blocks_are_rejected(block: dict[str, Any]) -> None:
    rejects(
        body(
            messages=[
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [block]},
            ]
        )
    )


def test_tool_round_trip_order_matches_the_original() -> None:
    """The original's reshaped-tools case: user, assistant(+tool_calls), tool, user."""
    out = msgs(
        messages=[
            {"role": "user", "content": "read /etc/hosts"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Reading it."},
                    {
                        "type": "tool_use",
                        "id": "toolu_42",
                        "name": "Read",
                        "input": {"path": "/etc/hosts"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_42",
                        "content": "127.0.0.1 localhost",
                    },
                    {"type": "text", "text": "Summarise."},
                ],
            },
        ]
    )
    assert [m["role"] for m in out] == ["user", "assistant", "tool", "user"]
    assert out[1]["tool_calls"][0]["id"] == "toolu_42"
    assert out[1]["tool_calls"][0]["function"]["arguments"] == {"path": "/etc/hosts"}
    assert out[2] == {"role": "tool", "tool_call_id": "toolu_42", "content": "127.0.0.1 localhost"}
    assert out[3] == {"role": "user", "content": "Summarise."}


# -- consecutive turns ---------------------------------------------------------------------------


def test_consecutive_user_turns_are_merged() -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
        ]
    )
    assert out == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]


def test_consecutive_assistant_turns_are_merged() -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "part one"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "X", "input": {"a": 1}}],
            },
        ]
    )
    assert out[1:] == [
        {
            "role": "assistant",
            "content": "part one",
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "X", "arguments": {"a": 1}}}
            ],
        }
    ]


def test_merged_user_turn_still_puts_tool_results_first() -> None:
    out = msgs(
        messages=[
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "X", "input": {}}],
            },
            {"role": "user", "content": "and also"},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
        ]
    )
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": ""},
        {"role": "user", "content": "and also"},
    ]


def test_message_order_is_preserved_for_alternating_turns() -> None:
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(7)]
    out = msgs(messages=turns, system="s")
    assert [m["content"] for m in out] == ["s"] + [f"m{i}" for i in range(7)]
    assert [m["role"] for m in out] == ["system"] + [t["role"] for t in turns]


# -- tools and tool_choice -----------------------------------------------------------------------

READ_TOOL = {
    "name": "Read",
    "description": "Read a file from disk",
    "input_schema": {
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
    },
}


def test_tools_reshaped_into_function_tools() -> None:
    out = translate_request(body(tools=[READ_TOOL, {"name": "Ls", "input_schema": {}}]))
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "Read",
                "description": "Read a file from disk",
                "parameters": READ_TOOL["input_schema"],
            },
        },
        {"type": "function", "function": {"name": "Ls", "parameters": {}}},
    ]
    assert "input_schema" not in str(out["tools"])


@pytest.mark.parametrize("kind", ["custom", None])
def test_tool_with_custom_or_null_type_is_accepted(kind: str | None) -> None:
    out = translate_request(body(tools=[{**READ_TOOL, "type": kind}]))
    assert out["tools"][0]["function"]["name"] == "Read"


def test_empty_tools_list_sends_no_tools() -> None:
    assert "tools" not in translate_request(body(tools=[]))


@pytest.mark.parametrize("kind", ["web_search_20250305", "bash_20250124", "computer_20250124"])
def test_non_custom_tool_types_are_rejected(kind: str) -> None:
    detail = rejects(body(tools=[{"type": kind, "name": "web_search"}]))
    assert detail == f"unsupported tool type '{kind}'"


@pytest.mark.parametrize(
    "tools",
    [
        "Read",
        [{"input_schema": {}}],
        [{"name": "", "input_schema": {}}],
        [{"name": "Read", "input_schema": "object"}],
        ["Read"],
    ],
)
def test_malformed_tools_are_rejected(tools: Any) -> None:
    rejects(body(tools=tools))


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "Read"}, {"type": "function", "function": {"name": "Read"}}),
    ],
)
def test_tool_choice_mapping(choice: dict[str, Any], expected: Any) -> None:
    out = translate_request(body(tools=[READ_TOOL], tool_choice=choice))
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


@pytest.mark.parametrize("kind", ["auto", "any", "tool"])
def test_disable_parallel_tool_use(kind: str) -> None:
    choice = {"type": kind, "name": "Read", "disable_parallel_tool_use": True}
    out = translate_request(body(tools=[READ_TOOL], tool_choice=choice))
    assert out["parallel_tool_calls"] is False
    choice["disable_parallel_tool_use"] = False
    assert "parallel_tool_calls" not in translate_request(
        body(tools=[READ_TOOL], tool_choice=choice)
    )


@pytest.mark.parametrize(
    "choice", ["auto", {"type": "tool"}, {"type": "tool", "name": ""}, {"type": "sometimes"}]
)
def test_malformed_tool_choice_is_rejected(choice: Any) -> None:
    rejects(body(tools=[READ_TOOL], tool_choice=choice))


# -- thinking, sampling, stop, stream ------------------------------------------------------------


def test_thinking_enabled_and_disabled_become_chat_template_kwargs() -> None:
    on = translate_request(body(thinking={"type": "enabled", "budget_tokens": 2048}))
    assert on["chat_template_kwargs"] == {"enable_thinking": True}
    assert "budget_tokens" not in str(on)
    off = translate_request(body(thinking={"type": "disabled"}))
    assert off["chat_template_kwargs"] == {"enable_thinking": False}
    assert "chat_template_kwargs" not in translate_request(body())
    adaptive = translate_request(body(thinking={"type": "adaptive"}))
    assert adaptive["chat_template_kwargs"] == {"enable_thinking": True}


def test_claude_code_thinking_shapes_are_accepted() -> None:
    for kind in ({"type": "adaptive", "display": "updates"}, {"type": "between_tools"}):
        out = translate_request(body(thinking=kind))
        assert out["chat_template_kwargs"] == {"enable_thinking": True}


@pytest.mark.parametrize(
    ("thinking", "effort", "expected"),
    [
        (None, "low", False),
        (None, "medium", True),
        (None, "high", True),
        (None, "xhigh", True),
        (None, "max", True),
        ({"type": "adaptive"}, "low", False),
        ({"type": "adaptive"}, "high", True),
        ({"type": "enabled", "budget_tokens": 1024}, "low", False),
        ({"type": "disabled"}, "max", False),
        ({"type": "disabled"}, None, False),
        ({"type": "adaptive"}, None, True),
    ],
)
def test_output_config_effort_maps_to_the_thinking_switch(
    thinking: Any, effort: str | None, expected: bool
) -> None:
    b = body(output_config={"effort": effort})
    if thinking is not None:
        b["thinking"] = thinking
    assert translate_request(b)["chat_template_kwargs"] == {"enable_thinking": expected}
    counted = translate_request(
        {k: v for k, v in b.items() if k != "max_tokens"}, count_tokens=True
    )
    assert counted["chat_template_kwargs"] == {"enable_thinking": expected}


def test_output_config_without_effort_leaves_thinking_to_the_model() -> None:
    assert "chat_template_kwargs" not in translate_request(body(output_config={}))


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ("high", "output_config"),
        ({"effort": "extreme"}, "output_config.effort"),
        ({"effort": ["high"]}, "output_config.effort"),
        ({"format": {"type": "json_object"}}, "output_config.format"),
        ({"format": {"type": "json_schema"}}, "output_config.format.schema"),
        ({"format": {"type": "json_schema", "schema": True}}, "output_config.format.schema"),
    ],
)
def test_bad_or_unsupported_output_config_is_refused(config: Any, fragment: str) -> None:
    rejects(body(output_config=config), fragment)


def test_output_config_format_is_the_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    out = translate_request(
        body(output_config={"format": {"type": "json_schema", "schema": schema}})
    )
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }
    assert "response_format" not in translate_request(body(output_config={"effort": "high"}))


def test_claude_code_max_tokens_goes_through_unclamped_for_the_neuron_to_clamp() -> None:
    assert translate_request(body(max_tokens=128000))["max_tokens"] == 128000


@pytest.mark.parametrize("thinking", [True, "enabled", {"type": "sometimes"}, {}])
def test_malformed_thinking_is_rejected(thinking: Any) -> None:
    rejects(body(thinking=thinking), "thinking")


def test_stop_sequences_become_stop() -> None:
    out = translate_request(body(stop_sequences=["END", "\n\nHuman:"]))
    assert out["stop"] == ["END", "\n\nHuman:"]
    assert "stop_sequences" not in out


@pytest.mark.parametrize("bad", ["END", [1], [None]])
def test_malformed_stop_sequences_are_rejected(bad: Any) -> None:
    rejects(body(stop_sequences=bad), "stop_sequences")


def test_sampling_parameters_are_copied() -> None:
    out = translate_request(body(temperature=0.2, top_p=0.9, top_k=40))
    assert (out["temperature"], out["top_p"], out["top_k"]) == (0.2, 0.9, 40)
    out = translate_request(body(temperature=0))
    assert out["temperature"] == 0
    assert "top_p" not in out and "top_k" not in out


@pytest.mark.parametrize("key", ["temperature", "top_p", "top_k"])
@pytest.mark.parametrize("bad", ["0.5", True, [1]])
def test_non_numeric_sampling_parameters_are_rejected(key: str, bad: Any) -> None:
    rejects(body(**{key: bad}), key)


def test_stream_true_asks_for_usage() -> None:
    out = translate_request(body(stream=True))
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}


def test_stream_false_or_absent_adds_nothing() -> None:
    for b in (body(), body(stream=False)):
        out = translate_request(b)
        assert "stream" not in out and "stream_options" not in out


def test_stream_must_be_boolean() -> None:
    rejects(body(stream="yes"), "stream")


# -- count_tokens bodies -------------------------------------------------------------------------


def test_count_tokens_body_needs_no_max_tokens_and_keeps_prompt_shaping_fields() -> None:
    b = body(
        system="s",
        tools=[READ_TOOL],
        tool_choice={"type": "any"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        stop_sequences=["x"],
        temperature=0.5,
        stream=True,
    )
    del b["max_tokens"]
    out = translate_request(b, count_tokens=True)
    assert out["messages"] == [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "hi"},
    ]
    assert out["tools"][0]["function"]["name"] == "Read"
    assert out["tool_choice"] == "required"
    assert out["chat_template_kwargs"] == {"enable_thinking": True}
    for key in ("max_tokens", "stop", "temperature", "stream", "stream_options"):
        assert key not in out


def test_count_tokens_body_is_still_validated() -> None:
    rejects({"model": "m"}, "messages", count_tokens=True)
    rejects(
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "document"}]}]},
        "document",
        count_tokens=True,
    )


def test_error_messages_name_the_anthropic_fields_the_chat_ones_came_from() -> None:
    assert anthropic_fields("'response_format.json_schema.schema' is bad") == (
        "'output_config.format.schema' is bad"
    )
    text = "tools[0].function.parameters and tools[12].function.parameters.properties.x"
    assert anthropic_fields(text) == "tools[0].input_schema and tools[12].input_schema.properties.x"
    assert anthropic_fields("temperature must be <= 2") == "temperature must be <= 2"
