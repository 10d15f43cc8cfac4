"""Constrained decoding: a grammar from the request masks every step's logits (llguidance).

The daemon builds and checks the grammar; the worker compiles it against this model's vocabulary
(once per grammar text, LRU) and gives each request its own matcher. A token the grammar can't
take next is masked out before sampling, each sampled token advances the matcher, and once the
grammar can't go on the generation ends as "stop" (EOS is allowed only where the grammar
accepts). With `after` (e.g. "</think>") the model writes freely until that marker, EOS
excepted, and the grammar applies from there.

The vocabulary is given to llguidance as the text each token decodes to, so that markers such as
`<tool_call>` (added, but not special, tokens) match the grammar's quoted text exactly as the
detokenizer shows them; only truly special tokens (EOS, `<|im_end|>`) are special here. Numpy
only, no torch: the llama.cpp worker uses it too.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import llguidance as llg
import numpy as np
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from helexa.neuron.engine.errors import RequestError
from helexa.neuron.engine.frames import Constraint

if TYPE_CHECKING:
    from tokenizers import Tokenizer

_CACHED_GRAMMARS = 32


def vocabulary(
    tokens: list[bytes],
    special: Iterable[int],
    eos_ids: Iterable[int],
    n_vocab: int,
    encode: Callable[[str], list[int]],
) -> llg.LLTokenizer:
    """An llguidance tokenizer over `n_vocab` logits: `tokens[i]` is token i's text, `special`
    the ids that never appear as text, `encode` plain-text tokenization (no special parsing)."""
    special = set(special)
    eos = sorted(eos_ids)
    # llguidance marks special tokens with a leading 0xff byte, so the raw byte 0xff (never in
    # UTF-8 text anyway) can't be a token of its own
    padded = [
        b"\xff" + t if i in special else b"" if t.startswith(b"\xff") else t
        for i, t in enumerate(tokens[:n_vocab])
    ]
    padded += [b""] * (n_vocab - len(padded))

    class _Source:
        eos_token_id = eos[0] if eos else 0
        bos_token_id = None
        tokens = padded
        special_token_ids = sorted(special)

        def __call__(self, s: str | bytes) -> list[int]:
            return encode(s.decode("utf-8", "replace") if isinstance(s, bytes) else s)

    return llg.LLTokenizer(llg.TokenizerWrapper(_Source()), n_vocab=n_vocab, eos_token=eos)


def hf_vocabulary(tok: Tokenizer, eos_ids: Iterable[int], n_vocab: int) -> llg.LLTokenizer:
    """From a `tokenizers.Tokenizer`; the added tokens not marked special count as text."""
    added = tok.get_added_tokens_decoder()
    texts = _byte_level_texts(tok, n_vocab)
    if texts is None:  # not byte-level (e.g. SentencePiece): llguidance decodes each token
        base = llg.LLTokenizer(tok.to_str(), n_vocab=n_vocab, eos_token=sorted(eos_ids))
        texts = [base.decode_bytes([i]) for i in range(min(base.vocab_size, n_vocab))]
    special = [i for i, t in added.items() if t.special]

    def encode(s: str) -> list[int]:
        return list(tok.encode(s, add_special_tokens=False).ids)

    return vocabulary(texts, special, eos_ids, n_vocab, encode)


def _byte_level_texts(tok: Tokenizer, n_vocab: int) -> list[bytes] | None:
    """Each token's bytes straight from a byte-level BPE vocabulary (GPT-2's byte alphabet),
    a second faster than asking llguidance for 150k tokens; None for other decoders."""
    from tokenizers import decoders

    if not isinstance(tok.decoder, decoders.ByteLevel):
        return None
    to_bytes = {ord(ch): b for b, ch in enumerate(_gpt2_alphabet())}  # then latin-1 encodes
    added = {i: t.content for i, t in tok.get_added_tokens_decoder().items()}
    texts = [b""] * n_vocab
    for piece, i in tok.get_vocab(with_added_tokens=False).items():
        if i < n_vocab:
            texts[i] = piece.translate(to_bytes).encode("latin-1")
    for i, content in added.items():
        if i < n_vocab:
            texts[i] = content.encode()
    return texts


def _gpt2_alphabet() -> list[str]:
    """The character byte-level BPE writes for each byte value (GPT-2's bytes_to_unicode)."""
    shown = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    shown += range(ord("®"), ord("ÿ") + 1)
    out, extra = [], 0
    for b in range(256):
        if b in shown:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


class Grammars:
    """Compiled grammars for one model. The vocabulary (a second or so for 150k tokens) is
    built in the background once the model is warm (`prepare`), else on first use."""

    def __init__(
        self, build_vocabulary: Callable[[], llg.LLTokenizer], eos_ids: Iterable[int]
    ) -> None:
        self._build = build_vocabulary
        self._eos = sorted(eos_ids)
        self._vocab: llg.LLTokenizer | None = None
        self._failed: Exception | None = None
        self._builder: threading.Thread | None = None
        self._compiled: OrderedDict[str, llg.LLMatcher] = OrderedDict()

    def prepare(self) -> None:
        """Start building the vocabulary on a thread, so no request waits for all of it."""
        if self._builder is None and self._vocab is None:
            self._builder = threading.Thread(target=self._build_now, name="vocab", daemon=True)
            self._builder.start()

    def _build_now(self) -> None:
        try:
            self._vocab = self._build()
        except Exception as e:
            self._failed = e

    @property
    def vocab(self) -> llg.LLTokenizer:
        if self._builder is not None:
            self._builder.join()
            self._builder = None
        if self._vocab is None and self._failed is None:
            self._build_now()
        if self._vocab is None:
            raise RequestError(
                "invalid_value",
                f"this model's tokenizer can't be used for constrained decoding: {self._failed}",
                "constraint",
            )
        return self._vocab

    def compile(self, grammar: str) -> llg.LLMatcher:
        """A fresh matcher for `grammar` (a copy of the cached compiled one); RequestError
        invalid_value when it doesn't compile."""
        pristine = self._compiled.get(grammar)
        if pristine is None:
            pristine = llg.LLMatcher(self.vocab, grammar, log_level=0)
            if pristine.is_error():
                why = pristine.get_error().strip().splitlines()[0]
                raise RequestError(
                    "invalid_value",
                    f"the constraint's grammar does not compile: {why}",
                    "constraint",
                )
            self._compiled[grammar] = pristine
            if len(self._compiled) > _CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(grammar)
        return pristine.deep_copy()

    def open(self, c: Constraint | None) -> Constrained | None:
        """The request's grammar state (None without a constraint); RequestError as `compile`."""
        if c is None:
            return None
        return Constrained(self.compile(c.grammar), self.vocab, c.after, self._eos)


class Constrained:
    """One request's grammar state: which tokens may come next, and whether it is complete."""

    def __init__(
        self,
        matcher: llg.LLMatcher,
        vocab: llg.LLTokenizer,
        after: str | None,
        eos_ids: Iterable[int],
    ) -> None:
        self.matcher = matcher
        self.vocab = vocab
        self._marker = after.encode() if after else b""
        self._seen = b""  # the free text's tail, while waiting for the marker
        self._bitmask = allocate_token_bitmask(1, vocab.vocab_size)
        self._eos = np.array([t for t in eos_ids if t < vocab.vocab_size], dtype=np.intp)
        self._eos_only = np.zeros(vocab.vocab_size if after else 0, dtype=np.bool_)
        if after:  # what `banned` says while free
            self._eos_only[self._eos] = True

    @property
    def complete(self) -> bool:
        """The grammar has matched and can't take another token: the generation ends."""
        return not self._marker and self.matcher.is_stopped()

    def banned(self) -> np.ndarray:
        """Which tokens can't come next: a bool per logit (the vocabulary spans the logits).
        Only EOS while free; valid until the next call."""
        if self._marker:
            return self._eos_only
        fill_next_token_bitmask(self.matcher, self._bitmask)
        np.invert(self._bitmask, out=self._bitmask)  # a set bit now bans its token
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        return bits[: self.vocab.vocab_size].view(np.bool_)

    def mask(self, logits: np.ndarray) -> None:
        """Set the logits of the tokens that can't come next to -inf, in place."""
        if self._marker:  # thinking can be long: touch only the EOS logits
            logits[self._eos] = -np.inf
            return
        np.copyto(logits, -np.inf, where=self.banned())

    def advance(self, token: int) -> None:
        """Feed the sampled token to the matcher (or look for the marker in it while free)."""
        if not self._marker:
            if not self.matcher.consume_token(token):  # only if logit_bias banned every way on
                raise RequestError(
                    "invalid_value",
                    f"no allowed token could continue the constraint's grammar: {self._error()}",
                    "constraint",
                )
            return
        self._seen += self.vocab.decode_bytes([token])
        at = self._seen.find(self._marker)
        if at < 0:
            self._seen = self._seen[-len(self._marker) :]
            return
        rest = self._seen[at + len(self._marker) :]
        self._marker = b""
        self._seen = b""
        if rest and not self.matcher.consume_tokens(self.vocab.tokenize_bytes(rest)):
            raise RequestError(
                "invalid_value",
                f"the text after the constraint's marker can't match its grammar: {self._error()}",
                "constraint",
            )

    def _error(self) -> str:
        err = self.matcher.get_error().strip()
        return err.splitlines()[0] if err else "no error"
