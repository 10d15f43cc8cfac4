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

from collections import OrderedDict
from collections.abc import Callable, Iterable

import llguidance as llg
import numpy as np
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from helexa.neuron.engine.errors import RequestError
from helexa.neuron.engine.frames import Constraint

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
    padded = [b"\xff" + t if i in special else t for i, t in enumerate(tokens[:n_vocab])]
    padded += [b""] * (n_vocab - len(padded))

    class _Source:
        eos_token_id = eos[0] if eos else 0
        bos_token_id = None
        tokens = padded
        special_token_ids = sorted(special)

        def __call__(self, s: str | bytes) -> list[int]:
            return encode(s.decode("utf-8", "replace") if isinstance(s, bytes) else s)

    return llg.LLTokenizer(llg.TokenizerWrapper(_Source()), n_vocab=n_vocab, eos_token=eos)


def hf_vocabulary(tokenizer_json: str, eos_ids: Iterable[int], n_vocab: int) -> llg.LLTokenizer:
    """From a tokenizer.json: llguidance decodes each token's bytes (byte-level, SentencePiece
    byte fallback...), and the added tokens not marked special count as text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    base = llg.LLTokenizer(tokenizer_json, n_vocab=n_vocab, eos_token=sorted(eos_ids))
    size = min(base.vocab_size, n_vocab)
    texts = [base.decode_bytes([i]) for i in range(size)]
    special = [i for i, t in tok.get_added_tokens_decoder().items() if t.special]

    def encode(s: str) -> list[int]:
        return list(tok.encode(s, add_special_tokens=False).ids)

    return vocabulary(texts, special, eos_ids, n_vocab, encode)


class Grammars:
    """Compiled grammars for one model; the vocabulary is built on the first constrained
    request (about a second for 150k tokens), so unconstrained serving never pays for it."""

    def __init__(
        self, build_vocabulary: Callable[[], llg.LLTokenizer], eos_ids: Iterable[int]
    ) -> None:
        self._build = build_vocabulary
        self._eos = sorted(eos_ids)
        self._vocab: llg.LLTokenizer | None = None
        self._compiled: OrderedDict[str, llg.LLMatcher] = OrderedDict()

    @property
    def vocab(self) -> llg.LLTokenizer:
        if self._vocab is None:
            try:
                self._vocab = self._build()
            except Exception as e:
                raise RequestError(
                    "invalid_value",
                    f"this model's tokenizer can't be used for constrained decoding: {e}",
                    "constraint",
                ) from e
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
        self._free = np.ones(vocab.vocab_size if after else 0, dtype=np.bool_)  # all but EOS
        self._free[[t for t in eos_ids if t < len(self._free)]] = False

    @property
    def complete(self) -> bool:
        """The grammar has matched and can't take another token: the generation ends."""
        return not self._marker and self.matcher.is_stopped()

    def allowed(self) -> np.ndarray:
        """Which tokens may come next: a bool per logit (the vocabulary spans the logits)."""
        if self._marker:
            return self._free
        fill_next_token_bitmask(self.matcher, self._bitmask)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        return bits[: self.vocab.vocab_size].view(np.bool_)

    def mask(self, logits: np.ndarray) -> None:
        """Set the logits of the tokens that can't come next to -inf, in place."""
        np.putmask(logits, ~self.allowed(), -np.inf)

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
