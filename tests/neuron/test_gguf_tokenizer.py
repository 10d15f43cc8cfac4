"""The daemon's GGUF metadata reader and tokenizer: metadata equal to the gguf package's reader,
ids equal to the source checkpoint's tokenizer and to llama.cpp's own tokenizer (vocab only),
chat prompts included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helexa.neuron.gguf_meta import GgufError, file_quant, read_metadata
from helexa.neuron.tokenizer import ChatTokenizer, TokenizerError
from rig.require import require_module

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Numbers: 0 12 345 6789 2026.",
    "Hello,  world!\n\n   indented\ttab\r\n",
    "don't I'LL we've THEY'RE",
    "Ünïcödé: café, naïve, 日本語, emoji 🙂 and ✓ marks.",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    '<think>step</think><tool_call>{"name": "Read"}</tool_call>',
    "",
]
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Read the file /etc/hosts"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "Read",
            "description": "Read a file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
]


@pytest.mark.parametrize("key", ["qwen3-F32", "qwen3_moe-Q8_0"])
def test_metadata_equals_the_gguf_package(tiny_gguf: dict[str, Path], key: str) -> None:
    import gguf

    ours = read_metadata(tiny_gguf[key])
    ref = {
        k: f.contents()
        for k, f in gguf.GGUFReader(tiny_gguf[key]).fields.items()
        if not k.startswith("GGUF.")
    }
    assert ours.keys() == ref.keys()
    for k, v in ref.items():
        assert ours[k] == (pytest.approx(v) if isinstance(v, float) else v), k
    assert file_quant(ours) == key.split("-")[1]


def test_not_a_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(GgufError):
        read_metadata(bad)
    with pytest.raises(TokenizerError):
        ChatTokenizer(bad)
    bad.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(GgufError, match="truncated"):
        read_metadata(bad)


def test_ids_equal_the_checkpoint_tokenizer(tiny_gguf: dict[str, Path], tiny_qwen3: Path) -> None:
    hf, gg = ChatTokenizer(tiny_qwen3), ChatTokenizer(tiny_gguf["qwen3-Q8_0"])
    for text in TEXTS:
        assert gg.encode(text) == hf.encode(text), text
        assert gg.decode(gg.encode(text)) == text
    assert gg.encode_chat(MESSAGES, TOOLS) == hf.encode_chat(MESSAGES, TOOLS)
    assert gg.special_tokens == {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    assert gg.tool_call and gg.reasoning and gg.vocab_size == hf.vocab_size


@pytest.fixture(scope="module")
def qwen2_pre_gguf(tmp_path_factory: pytest.TempPathFactory, tiny_qwen3: Path) -> Path:
    """The tiny Qwen3 with the pre-tokenizer real Qwen GGUFs carry (digits one by one)."""
    from fixtures.gguf import write_gguf

    return write_gguf(tiny_qwen3, tmp_path_factory.mktemp("qwen2pre") / "t.gguf", pre="qwen2")


@pytest.mark.parametrize("pre", ["gpt-2", "qwen2"])
def test_ids_equal_llama_cpp(tiny_gguf: dict[str, Path], qwen2_pre_gguf: Path, pre: str) -> None:
    llama_cpp: Any = require_module("llama_cpp", install="pip install llama-cpp-python")
    path = tiny_gguf["qwen3-Q8_0"] if pre == "gpt-2" else qwen2_pre_gguf
    ours = ChatTokenizer(path)
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    rendered, chat_ids = ours.encode_chat(MESSAGES, TOOLS)
    for text in [*TEXTS, rendered]:
        want = llm.tokenize(text.encode(), add_bos=False, special=True)
        assert ours.encode(text) == want, text
    assert chat_ids == llm.tokenize(rendered.encode(), add_bos=False, special=True)
    if pre == "qwen2":
        assert ours.encode("2026") == [ours.token_to_id(c) for c in "2026"]


def test_unsupported_pre_tokenizer_is_a_clear_error(tmp_path: Path, tiny_qwen3: Path) -> None:
    from fixtures.gguf import write_gguf

    path = write_gguf(tiny_qwen3, tmp_path / "t.gguf", pre="falcon3")
    with pytest.raises(TokenizerError, match="pre-tokenizer 'falcon3' is not supported"):
        ChatTokenizer(path)
