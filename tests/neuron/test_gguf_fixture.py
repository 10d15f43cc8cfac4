"""The GGUF test files (tests/fixtures/gguf.py) are what llama.cpp expects: metadata and
tensors read back, and llama.cpp's greedy tokens equal transformers' on the same checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rig.require import require_module

LLAMA_INSTALL = "pip install llama-cpp-python (see README: the llamacpp extra)"


def _field(reader: Any, key: str) -> Any:
    return reader.fields[key].contents()


@pytest.mark.parametrize("key", ["qwen3-F32", "qwen3-Q8_0", "qwen3_moe-F32", "qwen3_moe-Q8_0"])
def test_gguf_reads_back(tiny_gguf: dict[str, Path], key: str) -> None:
    import gguf

    reader = gguf.GGUFReader(tiny_gguf[key])
    arch = _field(reader, "general.architecture")
    assert arch == {"qwen3": "qwen3", "qwen3_moe": "qwen3moe"}[key.split("-")[0]]
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert tokens[_field(reader, "tokenizer.ggml.eos_token_id")] == "<|im_end|>"
    assert "<|im_start|>" in _field(reader, "tokenizer.chat_template")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert len(types) == 3 + 11 * 2 if arch == "qwen3" else len(types) == 3 + 12 * 2
    want = "Q8_0" if key.endswith("Q8_0") else "F32"
    assert types["blk.0.attn_q.weight"] == want
    assert types["blk.0.attn_norm.weight"] == "F32"


def test_gguf_split_shards(tiny_gguf_split: Path) -> None:
    import gguf

    shards = sorted(tiny_gguf_split.parent.glob("tiny-Q8_0-*-of-00003.gguf"))
    assert [s.name for s in shards] == [f"tiny-Q8_0-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert tiny_gguf_split == shards[0]
    assert sum(len(gguf.GGUFReader(s).tensors) for s in shards) == 3 + 11 * 2


def _hf_greedy(hf_dir: Path, prompt: list[int], n: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=n, do_sample=False, min_new_tokens=n
    )
    return [int(t) for t in out[0, len(prompt) :]]


def _llama_greedy(path: Path, prompt: list[int], n: int) -> list[int]:
    llama_cpp: Any = require_module("llama_cpp", install=LLAMA_INSTALL)
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, verbose=False, logits_all=True)
    llm.eval(prompt)
    out: list[int] = []
    for _ in range(n):
        logits = llm.scores[llm.n_tokens - 1]
        tok = int(logits.argmax())
        out.append(tok)
        llm.eval([tok])
    return out


@pytest.mark.parametrize(
    ("key", "hf"), [("qwen3-F32", "tiny_qwen3"), ("qwen3_moe-F32", "tiny_qwen3_moe_normed")]
)
def test_llama_cpp_greedy_matches_transformers(
    tiny_gguf: dict[str, Path], key: str, hf: str, request: pytest.FixtureRequest
) -> None:
    """F32: token for token. (The engine's tests cover Q8_0 and the full serving path.)"""
    hf_dir: Path = request.getfixturevalue(hf)
    from transformers import AutoTokenizer

    prompt = AutoTokenizer.from_pretrained(hf_dir).encode("The quick brown fox")
    want = _hf_greedy(hf_dir, prompt, 12)
    assert _llama_greedy(tiny_gguf[key], prompt, 12) == want
