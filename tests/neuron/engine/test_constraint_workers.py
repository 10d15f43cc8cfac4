"""Constrained decoding and logit_bias in real workers of both harnesses (torch on the tiny Qwen3,
llamacpp on its F32 GGUF): random weights never write valid JSON unaided, so every valid reply
here is the grammar's doing. Skipped without llama_cpp locally for that harness; CI fails."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
jsonschema = pytest.importorskip("jsonschema")
from workerctl import WorkerClient  # noqa: E402

from rig.require import require_module  # noqa: E402

pytestmark = pytest.mark.torch

PROMPT = [5, 6, 7, 8, 9, 10]
THINK_CLOSE = 601  # "</think>" in the tiny tokenizer

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "kind": {"enum": ["file", "dir", "link"]},
        "size": {"type": "integer", "minimum": 0, "maximum": 9999},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
        "owner": {
            "type": "object",
            "properties": {
                "uid": {"type": "integer", "minimum": 0, "maximum": 999},
                "admin": {"type": "boolean"},
            },
            "required": ["uid", "admin"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "kind", "tags", "owner"],
    "additionalProperties": False,
}
OTHER: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"enum": [1, 2, 3]}},
    "required": ["ok", "n"],
    "additionalProperties": False,
}


def grammar(schema: dict[str, Any]) -> str:
    """The schema inline, compact JSON (no free whitespace to spend max_tokens on)."""
    return "start: %json" + json.dumps({**schema, "x-guidance": {"whitespace_flexible": False}})


GREEDY: dict[str, Any] = {"temperature": 0}
SAMPLED: list[dict[str, Any]] = [{"temperature": 1.0, "seed": s} for s in (1, 2, 3)]


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory, tiny_qwen3: Path) -> Path:
    pytest.importorskip("gguf")
    from fixtures.gguf import write_gguf

    return write_gguf(tiny_qwen3, tmp_path_factory.mktemp("gguf") / "tiny-F32.gguf", "F32")


@pytest.fixture(scope="module", params=["torch", "llamacpp"])
def w(request: pytest.FixtureRequest, tiny_qwen3: Path) -> Iterator[WorkerClient]:
    spec: dict[str, Any] = {"path": str(tiny_qwen3), "served_id": "tiny/qwen3"}
    if request.param == "llamacpp":
        require_module("llama_cpp", install="pip install 'helexa[llamacpp]' (README: llama.cpp)")
        gguf = request.getfixturevalue("gguf")
        spec = {"path": str(gguf), "served_id": "tiny/gguf", "harness": "llamacpp", "quant": None}
    with WorkerClient.start(spec) as client:
        yield client
    assert client.proc.returncode == 0


def valid(text: str, schema: dict[str, Any]) -> Any:
    obj = json.loads(text)
    jsonschema.validate(obj, schema)
    return obj


@pytest.mark.parametrize("sampling", [GREEDY, *SAMPLED], ids=["greedy", "s1", "s2", "s3"])
def test_json_schema_output_validates(w: WorkerClient, sampling: dict[str, Any]) -> None:
    r = w.generate(
        PROMPT, max_tokens=200, sampling=sampling, constraint={"grammar": grammar(SCHEMA)}
    )
    assert (r.end["ev"], r.end["finish_reason"]) == ("done", "stop")
    valid(r.text, SCHEMA)
    assert r.ids[-1] != 2  # ended by the grammar, not by an EOS the model happened to pick


def test_unconstrained_output_is_not_json(w: WorkerClient) -> None:
    """The control: the same requests without a constraint don't parse."""
    for sampling in [GREEDY, *SAMPLED]:
        r = w.generate(PROMPT, max_tokens=60, sampling=sampling)
        with pytest.raises(ValueError):
            json.loads(r.text)


def test_concurrent_requests_keep_their_own_grammars(w: WorkerClient) -> None:
    ids = [
        w.submit(PROMPT, max_tokens=200, sampling=s, constraint={"grammar": grammar(schema)})
        for s, schema in [(GREEDY, SCHEMA), (SAMPLED[0], OTHER), (SAMPLED[1], SCHEMA)]
    ]
    a, b, c = (w.collect(rid) for rid in ids)
    valid(a.text, SCHEMA), valid(b.text, OTHER), valid(c.text, SCHEMA)


def test_free_text_until_the_marker_then_the_grammar(w: WorkerClient, tiny_qwen3: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_qwen3 / "tokenizer.json"))
    free = w.generate(PROMPT, max_tokens=12, sampling=GREEDY).ids
    assert 2 not in free
    # the marker: the text of a greedy token, first found where that token ends
    k = next(
        i
        for i in range(2, 12)
        if (marker := tok.decode(free[: i + 1])[len(head := tok.decode(free[:i])) :])
        and (head + marker).find(marker) == len(head)
    )
    head = tok.decode(free[: k + 1])
    r = w.generate(
        PROMPT,
        max_tokens=200,
        sampling=GREEDY,
        constraint={"grammar": grammar(OTHER), "after": head[len(tok.decode(free[:k])) :]},
    )
    assert r.ids[: k + 1] == free[: k + 1]  # free: what the model writes unconstrained
    assert r.text.startswith(head)
    valid(r.text[len(head) :], OTHER)
    assert r.end["finish_reason"] == "stop"


def test_think_then_json_with_a_forced_marker(w: WorkerClient) -> None:
    """logit_bias +100 makes `</think>` come first; from there the grammar rules (a masked
    token stays masked whatever its bias)."""
    r = w.generate(
        PROMPT,
        max_tokens=200,
        sampling={**SAMPLED[0], "logit_bias": {str(THINK_CLOSE): 100}},
        constraint={"grammar": grammar(OTHER), "after": "</think>"},
    )
    assert r.ids[0] == THINK_CLOSE and r.text.startswith("</think>")
    valid(r.text.removeprefix("</think>"), OTHER)


def test_logit_bias_forces_and_forbids(w: WorkerClient) -> None:
    forced = w.generate(PROMPT, max_tokens=6, sampling={**SAMPLED[0], "logit_bias": {"77": 100}})
    assert forced.ids == [77] * 6
    for sampling in [GREEDY, SAMPLED[0]]:
        plain = w.generate(PROMPT, max_tokens=12, sampling=sampling)
        banned = {str(t): -100 for t in set(plain.ids)}
        r = w.generate(PROMPT, max_tokens=12, sampling={**sampling, "logit_bias": banned})
        assert not set(r.ids) & set(plain.ids)


def test_max_tokens_too_small_ends_as_length(w: WorkerClient) -> None:
    r = w.generate(PROMPT, max_tokens=5, sampling=GREEDY, constraint={"grammar": grammar(SCHEMA)})
    assert (r.end["finish_reason"], r.end["completion_tokens"]) == ("length", 5)
    assert r.text.startswith('{"')


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"constraint": {"grammar": "start: nowhere"}}, "constraint"),
        ({"constraint": {"grammar": 'start: %json{"type": "nonsense"}'}}, "constraint"),
        ({"sampling": {"logit_bias": {"999999": 5}}}, "logit_bias"),
        ({"sampling": {"logit_bias": {"7": 500}}}, "logit_bias"),
    ],
)
def test_bad_requests_are_invalid_value(w: WorkerClient, extra: dict[str, Any], param: str) -> None:
    r = w.generate(PROMPT, max_tokens=4, **extra)
    assert (r.end["ev"], r.end["code"], r.end["param"]) == ("error", "invalid_value", param)
    assert w.generate(PROMPT, max_tokens=2).end["ev"] == "done"  # the worker carries on
