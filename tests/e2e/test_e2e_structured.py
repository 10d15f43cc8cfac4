"""Structured output and forced tool calls through a real cortex, neuron and engine worker, as
the real clients ask for them (issue 15): the openai SDK's `chat.completions.parse` and
`responses.parse`, LangChain's `with_structured_output` (function calling and json_schema) and
the anthropic SDK (`messages.parse`, a forced tool). The tiny model's weights are random, so
every parsed object here is the grammar's doing. Thinking is off: a thinking model may think
first, and random weights rarely close a think block within the budget."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import pytest
from e2e_rig import API_KEY, Stack
from pydantic import BaseModel, ConfigDict, Field
from test_e2e_sdk import ant as ant  # the fixtures: SDK clients of the session's stack
from test_e2e_sdk import oai as oai

from rig.cli_rig import clean_env
from rig.require import require_missing

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

pytestmark = [pytest.mark.torch, pytest.mark.slow]

MODEL = "local/qa"
MSGS: list[Any] = [{"role": "user", "content": "Read the order."}]
OFF = {"chat_template_kwargs": {"enable_thinking": False}}
Word = Annotated[str, Field(max_length=6)]


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a closed object: random weights add no keys

    sku: Word
    qty: Annotated[int, Field(ge=1, le=9)]


class Order(BaseModel):
    """An order (nested object, array, enum, all required)."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[int, Field(ge=0, le=999)]
    status: Literal["open", "shipped", "lost"]
    vip: bool
    items: Annotated[list[Item], Field(max_length=3)]


@pytest.mark.parametrize("seed", [1, 2])
def test_openai_chat_completions_parse(oai: Any, seed: int) -> None:
    reply = oai.chat.completions.parse(
        model=MODEL,
        messages=MSGS,
        response_format=Order,
        max_tokens=300,
        seed=seed,
        reasoning_effort="none",
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Order)


def test_openai_chat_stream_of_a_schema(oai: Any) -> None:
    with oai.chat.completions.stream(
        model=MODEL, messages=MSGS, response_format=Order, max_tokens=300, seed=3, extra_body=OFF
    ) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Order)


def test_openai_responses_parse(oai: Any) -> None:
    resp = oai.responses.parse(
        model=MODEL,
        input="Read the order.",
        text_format=Order,
        max_output_tokens=300,
        reasoning={"effort": "none"},
    )
    assert resp.status == "completed"
    assert isinstance(resp.output_parsed, Order)


def test_openai_forced_tool_call(oai: Any) -> None:
    tool = openai.pydantic_function_tool(Order, name="record_order")
    reply = oai.chat.completions.parse(
        model=MODEL,
        messages=MSGS,
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "record_order"}},
        max_tokens=300,
        extra_body=OFF,
    )
    calls = reply.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1
    assert isinstance(calls[0].function.parsed_arguments, Order)
    assert reply.choices[0].finish_reason == "tool_calls"


def _langchain(sdk_stack: Stack) -> Any:
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:
        require_missing("langchain_openai", "pip install -e '.[test]'")
    return ChatOpenAI(
        model=MODEL,
        base_url=sdk_stack.cortex.base,
        api_key=API_KEY,  # type: ignore[arg-type]
        max_tokens=300,  # type: ignore[call-arg]
        max_retries=0,
        http_client=httpx.Client(trust_env=False, timeout=120),
        extra_body=OFF,
        seed=5,
    )


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_langchain_with_structured_output(sdk_stack: Stack, method: str) -> None:
    # strict: the schema closes the objects (additionalProperties false) as OpenAI's strict
    # mode needs; open ones let random weights add keys until max_tokens
    chain = _langchain(sdk_stack).with_structured_output(Order, method=method, strict=True)
    assert isinstance(chain.invoke("Read the order."), Order)


class Triage(BaseModel):
    """Only closed choices: the anthropic SDK drops the length and range bounds from the schema
    it sends (Anthropic's structured outputs don't take them), and random weights write long
    strings and numbers."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["open", "shipped", "lost"]
    vip: bool
    level: Literal[1, 2, 3]


def test_anthropic_messages_parse(ant: Any) -> None:
    msg = ant.messages.parse(
        model=MODEL,
        max_tokens=300,
        messages=MSGS,
        output_format=Triage,
        thinking={"type": "disabled"},
    )
    assert msg.stop_reason == "end_turn"
    assert isinstance(msg.parsed_output, Triage)


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_forced_tool(ant: Any, stream: bool) -> None:
    schema = Order.model_json_schema()
    kw: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 300,
        "messages": MSGS,
        "tools": [{"name": "record_order", "description": "Record it", "input_schema": schema}],
        "tool_choice": {"type": "tool", "name": "record_order"},
        "thinking": {"type": "disabled"},
    }
    if stream:  # the arguments arrive as input_json_delta events as they are generated
        with ant.messages.stream(**kw) as s:
            deltas = sum(1 for ev in s if ev.type == "input_json")
            msg = s.get_final_message()
        assert deltas > 1
    else:
        msg = ant.messages.create(**kw)
    assert msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "record_order"
    Order.model_validate(uses[0].input)


def test_anthropic_bad_schemas_name_the_anthropic_fields(ant: Any) -> None:
    """The neuron refuses a schema it can't enforce; the SDK hears the field it sent."""
    bad = {"type": "thing"}
    kw: dict[str, Any] = {"model": MODEL, "max_tokens": 30, "messages": MSGS}
    fmt = {"type": "json_schema", "schema": bad}
    with pytest.raises(anthropic.BadRequestError) as e:
        ant.messages.create(**kw, extra_body={"output_config": {"format": fmt}})
    assert "'output_config.format.schema' is not a supported JSON schema" in e.value.message
    tools = [{"name": "a", "input_schema": {"type": "object"}}, {"name": "b", "input_schema": bad}]
    with pytest.raises(anthropic.BadRequestError) as e:
        ant.messages.create(**kw, tools=tools, tool_choice={"type": "tool", "name": "b"})
    assert "'tools[1].input_schema' is not a supported JSON schema" in e.value.message


def test_llm_cli_schema(sdk_stack: Stack, tmp_path: Path) -> None:
    """Simon Willison's `llm --schema`, on a model its config marks `supports_schema`."""
    if importlib.util.find_spec("llm") is None:
        require_missing("llm", "pip install -e '.[test]'")
    user = tmp_path / "llm"
    user.mkdir()
    (user / "extra-openai-models.yaml").write_text(
        f"- model_id: helexa-qa\n  model_name: {MODEL}\n  api_base: {sdk_stack.cortex.base}\n"
        "  api_key_name: helexa\n  supports_schema: true\n  reasoning: true\n"
    )
    (user / "keys.json").write_text(json.dumps({"helexa": API_KEY}))
    schema = Triage.model_json_schema()
    env = clean_env(drop_prefixes=("OPENAI_", "LLM_"), LLM_USER_PATH=str(user))
    args = ["-m", "helexa-qa", "-o", "reasoning_effort", "none", "-o", "max_tokens", "200"]
    out = subprocess.run(
        [sys.executable, "-m", "llm", *args, "--schema", json.dumps(schema), "Triage it."],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    Triage.model_validate_json(out.stdout)
