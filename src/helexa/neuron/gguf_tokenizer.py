"""A `tokenizers` Tokenizer rebuilt from a GGUF file's metadata (llama.cpp's `gpt2` byte-level
BPE: tokens, merges, token types, the pre-tokenizer named by `tokenizer.ggml.pre`), so the
daemon counts and builds prompts for a GGUF model without loading it and without llama.cpp.
Its ids equal llama.cpp's `tokenize(text, special=True)` (tested against llama-cpp-python)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from helexa.neuron.gguf_meta import read_metadata

# tokenizer.ggml.pre → the split regex llama.cpp uses for it (None: GPT-2's, built into
# ByteLevel). Names from llama.cpp's llama-vocab.cpp.
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS: dict[str, str | None] = {
    "default": None,
    "gpt-2": None,
    "qwen2": _QWEN2,
    "llama3": _LLAMA3,
    "llama-bpe": _LLAMA3,
}
_CONTROL, _USER_DEFINED = 3, 4


class GgufTokenizerError(ValueError):
    """The GGUF's tokenizer is one this daemon cannot rebuild (the message says which)."""


def gguf_tokenizer(path: Path) -> tuple[Tokenizer, dict[str, Any]]:
    """(tokenizer, a tokenizer_config-like dict: special token strings and `chat_template`)."""
    meta = read_metadata(path)
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GgufTokenizerError(
            f"{path.name}: tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2')"
        )
    pre = str(meta.get("tokenizer.ggml.pre", "default"))
    if pre not in PRE_TOKENIZERS:
        raise GgufTokenizerError(
            f"{path.name}: pre-tokenizer {pre!r} is not supported "
            f"(supported: {', '.join(PRE_TOKENIZERS)})"
        )
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise GgufTokenizerError(f"{path.name}: {len(types)} token types for {len(tokens)} tokens")
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    tok.pre_tokenizer = _pre_tokenizer(PRE_TOKENIZERS[pre])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == _CONTROL
        ]
    )
    tok.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == _USER_DEFINED
        ]
    )
    cfg: dict[str, Any] = {}
    for attr, key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ):
        tid = meta.get(f"tokenizer.ggml.{key}")
        if isinstance(tid, int) and 0 <= tid < len(tokens):
            cfg[attr] = tokens[tid]
    if meta.get("tokenizer.ggml.add_bos_token") and "bos_token" in cfg:
        bos = cfg["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    if isinstance(meta.get("tokenizer.chat_template"), str):
        cfg["chat_template"] = meta["tokenizer.chat_template"]
    return tok, cfg


def _pre_tokenizer(pattern: str | None) -> Any:
    if pattern is None:
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
