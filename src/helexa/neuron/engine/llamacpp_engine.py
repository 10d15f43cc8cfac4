"""The llama.cpp engine: one GGUF model in this worker process, stepped by our own loop.

Every request decodes in its own KV sequence of one unified cache, so a prompt sharing a prefix
with an earlier one prefills only the rest (llamacpp_prefix.py). llama.cpp gives raw logits and
the project's torch `Sampler` picks from them: the same processors in the same order as the torch
harness, so a request (seed included) means the same on both. Detokenisation, stop strings and
held markers are the shared loop's (`generation.step`), over the GGUF's own vocabulary.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from helexa.neuron.engine import generation
from helexa.neuron.engine.errors import Fault, RequestError
from helexa.neuron.engine.frames import Event, Generate, ReadyInfo
from helexa.neuron.engine.generation import GenerationState, StepResult
from helexa.neuron.engine.llamacpp_model import Context, ContextConfig, DecodeFull, GgufModel
from helexa.neuron.engine.llamacpp_prefix import PrefixCache, Slot
from helexa.neuron.engine.loader import LoadSpec
from helexa.neuron.engine.request_checks import (
    check_ids,
    check_length,
    not_embedding_only,
    open_generation,
    sampling_params,
)
from helexa.neuron.engine.sampling import Sampler, pick_checked
from helexa.neuron.engine.torch_device import MemoryProbe

log = logging.getLogger("helexa.neuron.engine")

_CPU = torch.device("cpu")


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
        self._decoded: dict[GenerationState, torch.Tensor] = {}  # this step's batched logits
        self._memory = MemoryProbe(torch.device(spec.device))
        self.load_secs = 0.0

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

    # ---- the decode loop's hooks ------------------------------------------------------------

    def logits(self, state: GenerationState) -> torch.Tensor:
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
        return torch.from_numpy(self.ctx.logits())

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
            self._decoded[s] = torch.from_numpy(self.ctx.logits(i))

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

    def pick(self, state: GenerationState, logits: torch.Tensor) -> int:
        sampler = state.sampler
        assert isinstance(sampler, Sampler)
        return pick_checked(sampler, logits, f"step {state.step_no} of request {state.id}")

    def release(self, state: GenerationState) -> None:
        if state.cache is not None:
            self.prefix.give_back(state.cache)

    # ---- requests ---------------------------------------------------------------------------

    def start(self, req: Generate) -> GenerationState:
        not_embedding_only(self.embedding_only, self.spec.served_id)
        prompt = check_ids(req.prompt_ids, self.vocab_size, "prompt_ids")
        check_length(len(prompt), self._prompt_cap())
        max_tokens = req.max_tokens
        if max_tokens is None:
            max_tokens = self.default_max_tokens(len(prompt))
        params = sampling_params(req.sampling, self.sampling_defaults)
        sampler = Sampler(params, vocab_size=self.vocab_size, device=_CPU, prompt_ids=prompt)
        return open_generation(req, prompt, max_tokens, sampler, self.model)

    def _prompt_cap(self) -> int:
        cap = self.spec.max_prompt_tokens
        return min(cap, self.n_ctx - 1) if cap else self.n_ctx - 1

    def default_max_tokens(self, prompt_len: int) -> int:
        room = self.n_ctx - prompt_len
        if self.spec.max_output_tokens is not None:
            room = min(room, self.spec.max_output_tokens)
        return max(0, room)

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
