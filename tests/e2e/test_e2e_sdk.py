"""The official openai and anthropic SDKs through a real cortex in front of a real neuron and
engine worker (issue 5, end to end): every route, and greedy text equal to transformers' own,
from the torch harness and from the llamacpp one on the same checkpoint's F32 GGUF."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e_rig import API_KEY, Stack

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

pytestmark = [pytest.mark.torch, pytest.mark.slow]

MODEL = "local/qa"
GGUF_MODEL = "local/qa-F32"  # the same checkpoint as an F32 GGUF (llamacpp harness)
PROMPT = "Read the file /etc/hosts please."
MSGS: list[Any] = [{"role": "user", "content": PROMPT}]
N = 12  # this seeded model emits no <think>/<tool_call> markers in its first 12 tokens here


@pytest.fixture(scope="module")
def expected(tiny_dir: Path) -> tuple[str, int]:
    """transformers' own greedy reply to the chat (text, completion tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    ids: Any = tok.apply_chat_template(MSGS, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=N, do_sample=False)
    new = out[0, ids.shape[1] :]
    return str(tok.decode(new, skip_special_tokens=True)), int(new.shape[0])


def openai_client(stack: Stack) -> Any:
    return openai.OpenAI(
        base_url=stack.cortex.base,
        api_key=API_KEY,
        http_client=httpx.Client(trust_env=False, timeout=60),
        max_retries=0,
    )


def anthropic_client(stack: Stack) -> Any:
    return anthropic.Anthropic(
        base_url=stack.cortex.url, api_key=API_KEY, max_retries=0, timeout=60
    )


@pytest.fixture(scope="module")
def oai(sdk_stack: Stack) -> Iterator[Any]:
    with openai_client(sdk_stack) as client:
        yield client


@pytest.fixture(scope="module")
def ant(sdk_stack: Stack) -> Iterator[Any]:
    with anthropic_client(sdk_stack) as client:
        yield client


@pytest.fixture(scope="module", params=["torch", "llamacpp"])
def served(request: pytest.FixtureRequest) -> tuple[Stack, str]:
    """The checkpoint under each harness: its stack and served model id."""
    if request.param == "torch":
        return request.getfixturevalue("sdk_stack"), MODEL
    return request.getfixturevalue("gguf_stack"), GGUF_MODEL


@pytest.fixture(scope="module")
def any_oai(served: tuple[Stack, str]) -> Iterator[tuple[Any, str]]:
    """An openai client of each harness's stack, and the model id to ask for."""
    with openai_client(served[0]) as client:
        yield client, served[1]


@pytest.fixture(scope="module")
def any_ant(served: tuple[Stack, str]) -> Iterator[tuple[Any, str]]:
    with anthropic_client(served[0]) as client:
        yield client, served[1]


def test_chat_matches_transformers_greedy(
    any_oai: tuple[Any, str], expected: tuple[str, int]
) -> None:
    oai, model = any_oai
    text, n = expected
    raw = oai.chat.completions.with_raw_response.create(
        model=model, messages=MSGS, max_tokens=N, temperature=0
    )
    assert raw.headers["x-helexa-node"] == "n1"
    assert raw.headers["x-helexa-model"] == model
    reply = raw.parse()
    m = reply.choices[0].message
    assert m.role == "assistant"
    assert m.content == text
    assert not (m.model_extra or {}).get("reasoning_content")
    assert reply.usage is not None and reply.usage.completion_tokens == n
    assert reply.model == model


def test_streaming_chat_matches_transformers_greedy(
    any_oai: tuple[Any, str], expected: tuple[str, int]
) -> None:
    oai, model = any_oai
    stream = oai.chat.completions.create(
        model=model,
        messages=MSGS,
        max_tokens=N,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == expected[0]
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == expected[1]


def test_streaming_chat_without_include_usage(
    oai: Any, sdk_stack: Stack, expected: tuple[str, int]
) -> None:
    """The README's loop (`choices[0]` on every chunk) over a real neuron: cortex asks it for the
    usage chunk, meters from it, and the client, which didn't ask, never sees it."""
    stream = oai.chat.completions.create(
        model=MODEL, messages=MSGS, max_tokens=N, temperature=0, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected[0]
    assert all(c.usage is None for c in chunks)
    last = sdk_stack.cortex.client.get("/api/history", params={"limit": 1}).json()["data"][0]
    assert (last["route"], last["status"]) == ("/v1/chat/completions", 200)
    assert last["completion_tokens"] == expected[1] and last["prompt_tokens"] > 0


def test_completions(oai: Any) -> None:
    reply = oai.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=5)
    assert reply.object == "text_completion"
    assert reply.usage is not None and reply.usage.completion_tokens >= 1
    assert isinstance(reply.choices[0].text, str)
    again = oai.completions.create(
        model=MODEL, prompt="The quick brown fox", max_tokens=5, temperature=0
    )
    assert (
        again.choices[0].text
        == oai.completions.create(
            model=MODEL, prompt="The quick brown fox", max_tokens=5, temperature=0
        )
        .choices[0]
        .text
    )


def test_responses_and_streaming_responses(oai: Any, expected: tuple[str, int]) -> None:
    resp = oai.responses.create(model=MODEL, input=PROMPT, max_output_tokens=N, temperature=0)
    assert resp.status == "incomplete"  # max_output_tokens reached
    assert resp.output_text == expected[0]
    assert resp.usage is not None and resp.usage.output_tokens == expected[1]

    # the cap ends the stream with `response.incomplete`, as OpenAI's does (so, as there, the
    # SDK's `get_final_response()`, which waits for `response.completed`, is not for this case)
    deltas, last = "", None
    with oai.responses.stream(
        model=MODEL, input=PROMPT, max_output_tokens=N, temperature=0
    ) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas += event.delta
            last = event
    assert deltas == expected[0]
    assert last is not None and last.type == "response.incomplete"
    assert last.response.status == "incomplete" and last.response.output_text == expected[0]
    assert last.response.output[-1].status == "incomplete"


def test_embeddings(oai: Any) -> None:
    emb = oai.embeddings.create(model=MODEL, input=["hello", "world"])
    assert [d.index for d in emb.data] == [0, 1]
    for d in emb.data:
        assert abs(sum(x * x for x in d.embedding) - 1) < 1e-4
    assert emb.data[0].embedding != emb.data[1].embedding
    assert emb.usage.prompt_tokens > 0


def test_models_list(oai: Any) -> None:
    models = {m.id: m for m in oai.models.list()}
    assert list(models) == [MODEL]
    extra = models[MODEL].model_extra or {}
    assert extra["loaded"] is True
    assert extra["locations"][0]["node"] == "n1"
    assert extra["locations"][0]["status"] == "loaded"


def test_anthropic_messages(any_ant: tuple[Any, str], expected: tuple[str, int]) -> None:
    ant, model = any_ant
    msg = ant.messages.create(
        model=model, max_tokens=N, messages=MSGS, extra_body={"temperature": 0}
    )
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.stop_reason == "max_tokens"
    assert "".join(b.text for b in msg.content if b.type == "text") == expected[0]
    assert msg.usage.output_tokens == expected[1]


def test_anthropic_streaming_messages(any_ant: tuple[Any, str], expected: tuple[str, int]) -> None:
    ant, model = any_ant
    with ant.messages.stream(
        model=model, max_tokens=N, messages=MSGS, extra_body={"temperature": 0}
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == expected[0]
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == expected[1]


def _prompt_tokens(u: Any) -> int:
    """Anthropic splits the prompt: `input_tokens` excludes what the prefix cache served."""
    return int(
        u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)
    )


def test_count_tokens_agrees_with_usage(ant: Any) -> None:
    counted = ant.messages.count_tokens(model=MODEL, messages=MSGS)
    msg = ant.messages.create(model=MODEL, max_tokens=1, messages=MSGS)
    assert counted.input_tokens == _prompt_tokens(msg.usage) > 0


def test_claude_code_shaped_request_is_clamped_not_refused(ant: Any) -> None:
    """Claude Code's shape on a real neuron: max_tokens far above the model's output limit
    (clamped, never a 400), a system turn after the user turn, adaptive thinking and an effort."""
    late: list[Any] = [
        *MSGS,
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
    ]
    extra = {"output_config": {"effort": "low"}, "temperature": 0}
    msg = ant.messages.create(
        model=MODEL,
        max_tokens=128000,
        messages=late,
        thinking={"type": "adaptive"},
        extra_body=extra,
    )
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert 0 < msg.usage.output_tokens <= 256  # the neuron's max_output_tokens
    counted = ant.messages.count_tokens(
        model=MODEL, messages=late, thinking={"type": "adaptive"}, extra_body=extra
    )
    assert counted.input_tokens == _prompt_tokens(msg.usage)
