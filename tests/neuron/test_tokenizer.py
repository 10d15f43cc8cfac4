"""The torch-free chat tokenizer equals transformers token for token."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fixtures.tiny import build_tokenizer
from helexa.neuron.engine.loader import ModelDir
from helexa.neuron.tokenizer import ChatTokenizer, TokenizerCache, TokenizerError, prepare_messages
from helexa.wire.errors import ApiError

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "Read",
            "description": "Read a file — ünïcode kept",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"],
            },
        },
    }
]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tok")
    out = {
        "atomic": base / "atomic",
        "split": base / "split",
        "opens": base / "opens",
    }
    build_tokenizer(out["atomic"])
    build_tokenizer(out["split"], atomic_markers=False)
    build_tokenizer(out["opens"], opens_think=True)
    return out


def hf(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def hf_ids(path: Path, messages: list[dict[str, Any]], tools: Any = None, **kw: Any) -> list[int]:
    out = hf(path).apply_chat_template(messages, tools=tools, add_generation_prompt=True, **kw)
    return list(out["input_ids"])


CASES: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], Any, dict[str, Any]]] = {
    # name: (our messages, the equivalent messages for transformers, tools, template kwargs)
    "plain": ([{"role": "user", "content": "Hello 日本語 🙂"}], [], None, {}),
    "system": (
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [],
        None,
        {},
    ),
    "tools": (
        [{"role": "system", "content": "Sys"}, {"role": "user", "content": "Read /etc/hosts"}],
        [],
        TOOLS,
        {},
    ),
    "tool_call_object_args": (
        [
            {"role": "user", "content": "Read /etc/hosts"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "Read", "arguments": {"path": "/etc/hosts"}},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "127.0.0.1 localhost"},
            {"role": "tool", "tool_call_id": "call_2", "content": "second"},
        ],
        [],
        TOOLS,
        {},
    ),
    "tool_call_string_args": (
        [
            {"role": "user", "content": "Read it"},
            {
                "role": "assistant",
                "content": "Sure.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "Read", "arguments": '{"path": "/etc/hosts"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "Read", "arguments": "not json"},
                    },
                ],
            },
        ],
        [
            {"role": "user", "content": "Read it"},
            {
                "role": "assistant",
                "content": "Sure.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "Read", "arguments": {"path": "/etc/hosts"}},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "Read", "arguments": "not json"},
                    },
                ],
            },
        ],
        TOOLS,
        {},
    ),
    "reasoning_content": (
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "\nadd them\n"},
            {"role": "user", "content": "and 3+3?"},
        ],
        [],
        None,
        {},
    ),
    "enable_thinking_false": (
        [{"role": "user", "content": "Hi"}],
        [],
        None,
        {"enable_thinking": False},
    ),
    "developer_role": (
        [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        None,
        {},
    ),
    "text_parts": (
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "line one"}, {"type": "text", "text": "two"}],
            }
        ],
        [{"role": "user", "content": "line one\ntwo"}],
        None,
        {},
    ),
}


@pytest.mark.parametrize("kind", ["atomic", "split", "opens"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_chat_equals_transformers(dirs: dict[str, Path], kind: str, case: str) -> None:
    ours, theirs, tools, kwargs = CASES[case]
    tok = ChatTokenizer(dirs[kind])
    text, ids = tok.encode_chat(ours, tools, chat_template_kwargs=kwargs)
    want = hf_ids(dirs[kind], theirs or ours, tools, **kwargs)
    assert ids == want
    assert tok.decode(ids) == text
    assert tok.render(ours, tools, **kwargs) == text


def test_prompt_opens_think(dirs: dict[str, Path]) -> None:
    msgs = [{"role": "user", "content": "Hi"}]
    opens, plain = ChatTokenizer(dirs["opens"]), ChatTokenizer(dirs["atomic"])
    assert opens.prompt_opens_think(opens.render(msgs))
    assert not opens.prompt_opens_think(opens.render(msgs, enable_thinking=False))
    assert not plain.prompt_opens_think(plain.render(msgs))


def test_marker_flags(dirs: dict[str, Path]) -> None:
    atomic, split = ChatTokenizer(dirs["atomic"]), ChatTokenizer(dirs["split"])
    assert (atomic.tool_call, atomic.reasoning) == (True, True)
    assert (split.tool_call, split.reasoning) == (False, False)
    assert atomic.has_chat_template
    # The engine's EOS rule reads the same files the tokenizer does.
    assert ModelDir(dirs["atomic"]).eos_ids(atomic.token_to_id) == [
        atomic.token_to_id("<|im_end|>")
    ]


@pytest.mark.parametrize(
    "prompt",
    ["", "hello world", "Ünïcödé 日本語 🙂", "a <think> b </think> <|im_end|> c", "  spaces\n\n"],
)
@pytest.mark.parametrize("kind", ["atomic", "split"])
def test_raw_encode_equals_transformers(dirs: dict[str, Path], kind: str, prompt: str) -> None:
    tok = ChatTokenizer(dirs[kind])
    assert tok.encode(prompt) == list(hf(dirs[kind])(prompt)["input_ids"])
    assert tok.decode(tok.encode(prompt)) == prompt


def test_batch_encode(dirs: dict[str, Path]) -> None:
    tok = ChatTokenizer(dirs["atomic"])
    assert tok.encode_batch(["a b", "c"]) == [tok.encode("a b"), tok.encode("c")]


@pytest.fixture(scope="module")
def bos_dir(dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama-style variant: a BOS post-processor, `bos_token` used by the template, EOS from
    generation_config as a list, and a tool_use template beside the default."""
    d = tmp_path_factory.mktemp("bos")
    shutil.copytree(dirs["atomic"], d, dirs_exist_ok=True)
    tj = json.loads((d / "tokenizer.json").read_text())
    bos_id = next(t["id"] for t in tj["added_tokens"] if t["content"] == "<|endoftext|>")
    tj["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {
            "<|endoftext|>": {"id": "<|endoftext|>", "ids": [bos_id], "tokens": ["<|endoftext|>"]}
        },
    }
    (d / "tokenizer.json").write_text(json.dumps(tj))
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["bos_token"] = "<|endoftext|>"
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    (d / "chat_template.jinja").write_text(
        "{{ bos_token }}{% for m in messages %}{% generation %}<|im_start|>{{ m.role }}\n"
        "{{ m.content }}<|im_end|>\n{% endgeneration %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    (d / "additional_chat_templates").mkdir()
    (d / "additional_chat_templates" / "tool_use.jinja").write_text(
        "{{ bos_token }}TOOLS{{ tools | tojson }}{% for m in messages %}{{ m.content }}"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    return d


def test_bos_post_processor_and_variables(bos_dir: Path) -> None:
    tok = ChatTokenizer(bos_dir)
    ref = hf(bos_dir)
    assert tok.encode("hello") == list(ref("hello")["input_ids"])
    assert tok.encode("hello")[0] == tok.token_to_id("<|endoftext|>")
    assert tok.encode("hello", add_special_tokens=False) == list(
        ref("hello", add_special_tokens=False)["input_ids"]
    )
    msgs = [{"role": "user", "content": "hi"}]
    text, ids = tok.encode_chat(msgs)
    assert text.startswith("<|endoftext|><|im_start|>user")
    assert ids == hf_ids(bos_dir, msgs)
    text, ids = tok.encode_chat(msgs, TOOLS)
    assert text.startswith("<|endoftext|>TOOLS[{")
    assert ids == hf_ids(bos_dir, msgs, TOOLS)
    assert ModelDir(bos_dir).eos_ids(tok.token_to_id) == [0, 2]


def test_template_from_tokenizer_config(dirs: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(dirs["atomic"], tmp_path, dirs_exist_ok=True)
    (tmp_path / "chat_template.jinja").unlink()
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [
        {"name": "default", "template": "D{{ messages[0].content }}"},
        {"name": "tool_use", "template": "T{{ messages[0].content }}"},
    ]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = ChatTokenizer(tmp_path)
    msgs = [{"role": "user", "content": "x"}]
    assert tok.render(msgs) == "Dx"
    assert tok.render(msgs, TOOLS) == "Tx"
    assert tok.encode_chat(msgs, TOOLS)[1] == hf_ids(tmp_path, msgs, TOOLS)
    cfg["chat_template"] = "S{{ messages[0].content }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert ChatTokenizer(tmp_path).render(msgs) == "Sx"


def test_no_chat_template(dirs: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(dirs["atomic"], tmp_path, dirs_exist_ok=True)
    (tmp_path / "chat_template.jinja").unlink()
    tok = ChatTokenizer(tmp_path)
    assert not tok.has_chat_template
    with pytest.raises(ApiError) as ei:
        tok.render([{"role": "user", "content": "x"}], model_id="me/raw")
    assert (ei.value.status, ei.value.code) == (400, "unsupported_model_capability")
    assert ei.value.message == "model 'me/raw' has no chat template; use /v1/completions"


def test_template_errors(dirs: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(dirs["atomic"], tmp_path, dirs_exist_ok=True)
    (tmp_path / "chat_template.jinja").write_text(
        "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}"
        "{{ strftime_now('%Y') }}{% set ns = namespace(n=0) %}{{ ns.n }}{{ dict(a=1) | tojson }}"
    )
    tok = ChatTokenizer(tmp_path)
    assert tok.render([{"role": "user", "content": "x"}]).endswith('0{"a": 1}')
    with pytest.raises(ApiError) as ei:
        tok.render([{"role": "system", "content": "x"}])
    assert (ei.value.status, ei.value.code, ei.value.param) == (400, "invalid_value", "messages")
    assert "first must be user" in ei.value.message
    with pytest.raises(ApiError) as ei:
        tok.render([])
    assert ei.value.code == "invalid_value"


def test_sandbox_refuses_underscore_namespace(dirs: dict[str, Path], tmp_path: Path) -> None:
    shutil.copytree(dirs["atomic"], tmp_path, dirs_exist_ok=True)
    (tmp_path / "chat_template.jinja").write_text("{% set ns = namespace(_x=1) %}{{ ns._x }}")
    with pytest.raises(ApiError) as ei:
        ChatTokenizer(tmp_path).render([{"role": "user", "content": "x"}])
    assert ei.value.code == "invalid_value"


def test_prepare_messages() -> None:
    out = prepare_messages(
        [
            {"role": "developer", "content": "d", "name": None},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image_url", "image_url": {"url": "x"}},
                    {"type": "input_text", "text": "b"},
                ],
            },
            {"role": "assistant", "content": "c", "reasoning": "r"},
        ]
    )
    assert out[0] == {"role": "system", "content": "d"}
    assert out[1]["content"] == "a\nb"
    assert out[2]["reasoning_content"] == out[2]["thinking"] == "r"


def test_missing_tokenizer_json(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError):
        ChatTokenizer(tmp_path)


def test_lru_cache(dirs: dict[str, Path], tmp_path: Path) -> None:
    paths = []
    for i in range(9):
        d = tmp_path / f"m{i}"
        shutil.copytree(dirs["atomic"], d)
        paths.append(d)
    cache = TokenizerCache(maxsize=8)
    first = cache.get(paths[0])
    assert cache.get(paths[0]) is first
    for p in paths[1:8]:
        cache.get(p)
    cache.get(paths[0])  # most recently used again: paths[1] is now the oldest
    cache.get(paths[8])
    assert len(cache) == 8
    assert paths[0] in cache and paths[1] not in cache
    assert cache.get(paths[0]) is first


def test_daemon_modules_never_import_torch() -> None:
    code = (
        "import sys, helexa.neuron.tokenizer, helexa.neuron.sources, helexa.neuron.discovery, "
        "helexa.config.neuron, helexa.wire.modelid\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# Qwen3.5's rule, as its template words it.
LEADING_SYSTEM_ONLY = (
    "{% for m in messages %}{% if m.role == 'system' and not loop.first %}"
    "{{ raise_exception('System message must be at the beginning.') }}{% endif %}"
    "<{{ m.role }}>{{ m.content }}{% endfor %}"
)


def test_late_system_turns_fold_into_the_first_when_the_template_refuses_them(
    dirs: dict[str, Path], tmp_path: Path
) -> None:
    shutil.copytree(dirs["atomic"], tmp_path, dirs_exist_ok=True)
    (tmp_path / "chat_template.jinja").write_text(LEADING_SYSTEM_ONLY)
    tok = ChatTokenizer(tmp_path)
    claude_code = [
        {"role": "system", "content": "Top."},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "Env."}]},
        {"role": "assistant", "content": "ok"},
        {"role": "developer", "content": "Late."},
    ]
    assert tok.render(claude_code) == "<system>Top.\n\nEnv.\n\nLate.<user>hi<assistant>ok"
    assert tok.render(claude_code[1:3]) == "<system>Env.<user>hi"
    # Nothing to fold: the template's own error still reaches the client.
    (tmp_path / "chat_template.jinja").write_text("{{ raise_exception('no tools here') }}")
    with pytest.raises(ApiError) as ei:
        ChatTokenizer(tmp_path).render(claude_code)
    assert "no tools here" in ei.value.message


def test_late_system_turns_stay_in_place_when_the_template_renders_them(
    dirs: dict[str, Path],
) -> None:
    """The Qwen3 template takes a late system turn: the prompt keeps it where it was sent."""
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "Env."},
        {"role": "user", "content": "go"},
    ]
    text = ChatTokenizer(dirs["atomic"]).render(msgs)
    assert text.index("hi") < text.index("<|im_start|>system\nEnv.") < text.index("go")
