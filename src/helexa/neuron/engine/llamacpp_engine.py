"""The llama.cpp engine: one GGUF model in this worker process, stepped by our own loop.

Every request decodes in its own KV sequence of one unified cache, so a prompt sharing a prefix
with an earlier one prefills only the rest (llamacpp_prefix.py). llama.cpp gives raw logits and
`NumpySampler` picks from them: the same processors in the same order as the torch harness, so a
request means the same on both. No torch here: a GGUF-only host needs llama_cpp and numpy.
Detokenisation, stop strings and held markers are the shared loop's (`generation.step`), over
the GGUF's own vocabulary.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from llguidance import LLTokenizer

from helexa.neuron.engine import generation
from helexa.neuron.engine.constraint import Grammars, vocabulary
from helexa.neuron.engine.errors import Fault, RequestError
from helexa.neuron.engine.frames import Event, Generate, ReadyInfo
from helexa.neuron.engine.generation import GenerationState, StepResult
from helexa.neuron.engine.llamacpp_model import Context, ContextConfig, DecodeFull, GgufModel
from helexa.neuron.engine.llamacpp_prefix import PrefixCache, Slot
from helexa.neuron.engine.loader import LoadSpec
from helexa.neuron.engine.logit_bias import logit_bias
from helexa.neuron.engine.request_checks import (
    check_ids,
    check_length,
    not_embedding_only,
    open_generation,
    sampling_params,
)
from helexa.neuron.engine.sampling_np import NumpySampler, Scores, check_finite
from helexa.neuron.memory import ProcessMemory

log = logging.getLogger("helexa.neuron.engine")

# An idle sequence shorter than this is not kept for reuse. Every decode attends over all the
# occupied cells of the unified cache, idle sequences' too (measured on CPU: 10 idle sequences
# of 160 tokens made a 34-token prefill +20% and each decode step +8%), while prefilling this
# many tokens again is one batched decode.
KEEP_MIN = 256


def gguf_vocabulary(model: GgufModel, eos_ids: frozenset[int]) -> LLTokenizer:
    """The GGUF's tokens as the text they decode to; control tokens are the special ones."""
    import llama_cpp as L

    special = {t for t in range(model.n_vocab) if L.llama_vocab_is_control(model.vocab, t)}
    texts = [model.piece(t, t in special) for t in range(model.n_vocab)]
    return vocabulary(texts, special, eos_ids, model.n_vocab, model.tokenize)


class LlamaCppEngine:
    """A loaded GGUF model and everything needed to serve it from this process (base.Engine)."""

    def __init__(self, spec: LoadSpec, model: GgufModel, ctx: Context, *, n_seq: int) -> None:
        self.spec = spec
        self.model = model
        self.ctx = ctx
        self.n_ctx = ctx.n_ctx
        self.eos_ids = model.eos_ids()
        self.vocab_size = model.n_vocab
        self.pooling = model.pooling()
        self.embedding_only = self.pooling is not None
        self.prefix = PrefixCache(n_seq)
        self.sampling_defaults: dict[str, Any] = {}
        self._embed_ctx: Context | None = None
        self._decoded: dict[GenerationState, Scores] = {}  # this step's batched logits
        self._memory = ProcessMemory(cuda=spec.device == "cuda")
        self.load_secs = 0.0
        self.grammars = Grammars(lambda: gguf_vocabulary(model, self.eos_ids), self.eos_ids)

    def warmup(self) -> None:
        """One real decode (catches broken weights at load)."""
        tok = min(self.eos_ids) if self.eos_ids else 0
        if self.embedding_only:
            self.embed([[tok, tok]])
            return
        self.ctx.feed(0, [tok, tok], 0)
        finite = bool(np.isfinite(self.ctx.logits()).all())
        self.ctx.forget(0)
        if not finite:
            raise RuntimeError("the model produced non-finite logits on a warm-up decode")
        self.grammars.prepare()

    # ---- the decode loop's hooks ------------------------------------------------------------

    def logits(self, state: GenerationState) -> Scores:
        """The scores at the prompt's or the last token's position: a view of llama.cpp's own
        buffer (valid until the next decode; `pick` comes first), or a copy from the batch."""
        slot: Slot | None = state.cache
        if slot is None:
            taken = self.prefix.take(state.prompt)
            if taken is None:
                raise RequestError("server_busy", "every KV sequence of this worker is in use")
            slot, keep = taken
            if keep and not self.ctx.forget(slot.seq, keep):
                keep = 0  # a recurrent state can't be cut back: prefill it all
            state.cache = slot
            state.cached_tokens = keep
            self._feed(slot, state.prompt[keep:], keep)
        elif state in self._decoded:
            return self._decoded.pop(state)
        else:
            self._feed(slot, [state.token_ids[-1]], len(slot.tokens))
        return self.ctx.logits()

    def _decode_together(self, active: list[GenerationState]) -> None:
        """One batched decode for every generation past its prefill that needs a token; on
        any failure each falls back to its own decode (which makes room or reports)."""
        todo = [
            s
            for s in active
            if s.cache is not None and not s.finished and len(s.token_ids) < s.max_tokens
        ]
        if len(todo) < 2 or len(todo) > self.ctx.cfg.n_batch:
            return
        items = [(s.cache.seq, s.token_ids[-1], len(s.cache.tokens)) for s in todo]
        try:
            self.ctx.feed_each(items)
        except Exception:  # each decodes alone next, and reports its own error
            return
        for i, s in enumerate(todo):
            s.cache.tokens.append(s.token_ids[-1])
            # a copy: a prefill later in this step overwrites llama.cpp's buffer
            self._decoded[s] = self.ctx.logits(i).copy()

    def _feed(self, slot: Slot, tokens: list[int], start: int) -> None:
        """Decode `tokens` after the first `start` cached ones, dropping idle sequences (least
        recently used first) while the cache is full."""
        if not self.ctx.forget(slot.seq, start):
            raise RuntimeError(f"KV sequence {slot.seq} could not be cut at {start}")
        del slot.tokens[start:]
        while True:
            try:
                self.ctx.feed(slot.seq, tokens, start)
            except DecodeFull:
                victims = [v for v in self.prefix.victims() if v is not slot]
                if not victims:
                    raise RequestError(
                        "context_length_exceeded",
                        f"the request needs more than the {self.n_ctx} tokens of KV cache "
                        "this model was loaded with",
                    ) from None
                self.ctx.forget(victims[0].seq)
                victims[0].tokens.clear()
                continue
            except Exception:
                self.ctx.forget(slot.seq)
                slot.tokens.clear()
                raise
            slot.tokens.extend(tokens)
            return

    def pick(self, state: GenerationState, logits: Scores) -> int:
        """Check the raw scores (a Fault when any is non-finite), then sample. `logits` is a
        writable float32 array of shape (vocab,) that nothing reads after this call: a
        per-request token mask or logit_bias is applied to it here, in place, between the two."""
        check_finite(logits, f"step {state.step_no} of request {state.id}")
        if state.bias is not None:
            state.bias.apply(logits)
        if state.constraint is not None:
            state.constraint.mask(logits)
        sampler = state.sampler
        assert isinstance(sampler, NumpySampler)
        return sampler.sample(logits)

    def release(self, state: GenerationState) -> None:
        """Give the sequence back; a short one's KV cells are dropped now (see KEEP_MIN)."""
        slot: Slot | None = state.cache
        if slot is None:
            return
        if len(slot.tokens) < KEEP_MIN:
            self.ctx.forget(slot.seq)
            slot.tokens.clear()
        self.prefix.give_back(slot)

    # ---- requests ---------------------------------------------------------------------------

    def start(self, req: Generate) -> GenerationState:
        not_embedding_only(self.embedding_only, self.spec.served_id)
        prompt = check_ids(req.prompt_ids, self.vocab_size, "prompt_ids")
        check_length(len(prompt), self._prompt_cap())
        max_tokens = req.max_tokens
        if max_tokens is None:
            max_tokens = self.default_max_tokens(len(prompt))
        params = sampling_params(req.sampling, self.sampling_defaults)
        sampler = NumpySampler(params, vocab_size=self.vocab_size, prompt_ids=prompt)
        state = open_generation(req, prompt, max_tokens, sampler, self.model)
        state.bias = logit_bias(req.sampling, self.vocab_size)
        state.constraint = self.grammars.open(req.constraint)
        return state

    def _prompt_cap(self) -> int:
        cap = self.spec.max_prompt_tokens
        return min(cap, self.n_ctx - 1) if cap else self.n_ctx - 1

    def default_max_tokens(self, prompt_len: int) -> int:
        room = self.n_ctx - prompt_len
        if self.spec.max_output_tokens is not None:
            room = min(room, self.spec.max_output_tokens)
        return max(0, room)

    def admits(self, state: GenerationState, running: list[GenerationState]) -> bool:
        """While a KV sequence is free for it; past that it waits in the worker."""
        return len(running) < len(self.prefix.slots)

    def step(self, active: list[GenerationState]) -> list[StepResult]:
        self._decode_together(active)
        try:
            return generation.step(self, active)
        finally:
            self._decoded.clear()

    def cancel(self, state: GenerationState) -> list[Event]:
        return generation.cancel(self, state)

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text)

    def embed(self, inputs: list[list[int]]) -> tuple[list[list[float]], int]:
        """Pooled, L2-normalised vectors in input order (the GGUF's pooling, else the last
        token's hidden state as the torch harness does), and the token count."""
        seqs = [check_ids(x, self.vocab_size, "inputs") for x in inputs]
        for s in seqs:
            check_length(len(s), self._prompt_cap())
        ctx = self._embedder(max((len(s) for s in seqs), default=1))
        found: dict[tuple[int, ...], list[float]] = {}
        for s in seqs:
            key = tuple(s)
            if key in found or not s:
                continue
            ctx.forget(0)
            ctx.feed(0, s, 0)
            v = ctx.pooled(0).astype(np.float64)
            if not np.isfinite(v).all():
                raise Fault("non_finite", "non-finite values in pooled embeddings")
            norm = math.sqrt(float(v @ v)) or 1.0
            found[key] = [float(x) / norm for x in v]
        empty = [0.0] * self.model.n_embd
        return [found.get(tuple(s), empty) for s in seqs], sum(len(s) for s in seqs)

    def _embedder(self, longest: int) -> Context:
        """A second context computing pooled embeddings, a whole input per batch: sized to the
        longest input so far (a power of two from 512), not to the model's context."""
        size = 512
        while size < longest:
            size *= 2
        size = min(size, self.n_ctx)
        if self._embed_ctx is not None and self._embed_ctx.n_ctx >= size:
            return self._embed_ctx
        if self._embed_ctx is not None:
            self._embed_ctx.close()
        import llama_cpp as L

        pooling = (
            L.LLAMA_POOLING_TYPE_UNSPECIFIED if self.embedding_only else L.LLAMA_POOLING_TYPE_LAST
        )
        cfg = self.ctx.cfg
        self._embed_ctx = Context(
            self.model,
            ContextConfig(
                size,
                threads=cfg.threads,
                kv_type=cfg.kv_type,
                embeddings=True,
                pooling=pooling,
                n_batch=size,
            ),
        )
        return self._embed_ctx

    # ---- measurements and failures ----------------------------------------------------------

    def memory_mb(self) -> int | None:
        return self._memory.used_mb()

    def info(self) -> ReadyInfo:
        return ReadyInfo(
            vram_used_mb=self.memory_mb(),
            devices=list(self.spec.devices),
            harness="llamacpp",
            quant=self.model.quant,
            dtype=None,
            max_position_embeddings=self.n_ctx,
            capabilities=["embedding"] if self.embedding_only else ["text"],
            load_secs=self.load_secs,
            embedding_dim=self.model.n_embd,
            vocab_size=self.vocab_size,
            eos_token_ids=sorted(self.eos_ids),
            model_type=self.model.arch,
        )

    def classify(self, exc: Exception) -> RequestError | Fault:
        if isinstance(exc, Fault | RequestError):
            return exc
        log.exception("a request failed", exc_info=exc)
        return RequestError("internal_error", f"{type(exc).__name__}: {exc}")
