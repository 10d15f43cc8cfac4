"""The torch engine: one transformers model in this worker process, stepped by our own loop.

Prefill once, then one token per step with a KV cache (`DynamicCache` by default; a pooled
`StaticCache`, and a `torch.compile`d decode step (torch_compile), when the load spec asks). Each
request keeps its own cache, sampler and detokenizer in its `GenerationState`; the loop itself is
`generation.step`. Logits are checked for non-finite values at every step.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from helexa.neuron.engine import generation
from helexa.neuron.engine.constraint import Grammars, hf_vocabulary
from helexa.neuron.engine.errors import Fault, RequestError
from helexa.neuron.engine.frames import Event, Generate, ReadyInfo
from helexa.neuron.engine.generation import GenerationState, StepResult
from helexa.neuron.engine.kv_budget import KvBudget, need
from helexa.neuron.engine.loader import LoadSpec, ModelDir, Pooling
from helexa.neuron.engine.logit_bias import logit_bias
from helexa.neuron.engine.request_checks import (
    check_ids,
    check_length,
    not_embedding_only,
    open_generation,
    sampling_params,
)
from helexa.neuron.engine.sampling import Sampler, defaults_from_generation_config, pick_checked
from helexa.neuron.engine.static_pool import StaticPool
from helexa.neuron.engine.tokens import WorkerTokenizer
from helexa.neuron.engine.torch_batch import Batch, DecodeBatch, as_dynamic, fed, kv_cost, refusal
from helexa.neuron.engine.torch_compile import compile_step, one_size, wanted
from helexa.neuron.engine.torch_device import (
    DTYPES,
    MemoryProbe,
    free_mb,
    is_cuda_error,
    is_oom,
)
from helexa.neuron.engine.torch_embed import by_length, pool_hidden
from helexa.neuron.engine.torch_prefix import DEFAULT_MB, PrefixCache, cuttable
from helexa.neuron.engine.torch_static_batch import EAGER_CPU, StaticBatch, static_refusal

log = logging.getLogger("helexa.neuron.engine")

PREFILL_CHUNK = 512  # prompt tokens a step while other generations decode


class TorchEngine:
    """A loaded model and everything needed to serve it from this process (see base.Engine)."""

    def __init__(
        self,
        spec: LoadSpec,
        model: Any,
        tokenizer: WorkerTokenizer,
        md: ModelDir,
        *,
        device: torch.device,
        quant: str,
        embedding_only: bool,
        pooling: Pooling,
    ) -> None:
        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.md = md
        self.device = device
        self.quant = quant
        self.dtype = DTYPES[quant]
        self.embedding_only = embedding_only
        self.pooling = pooling
        self.base = model.base_model if hasattr(model, "base_model") else model
        self.text_config = (
            model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
        ) or model.config
        self.max_position_embeddings: int | None = getattr(
            self.text_config, "max_position_embeddings", None
        )
        self.eos_ids = frozenset(md.eos_ids(tokenizer.token_to_id))
        self.sampling_defaults = defaults_from_generation_config(md.generation_config)
        self.vocab_size = int(model.get_input_embeddings().weight.shape[0])
        self.logits_size = self.vocab_size
        self.hidden_size = int(getattr(self.text_config, "hidden_size", 0) or 0)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw: dict[str, Any] = {}
        if "logits_to_keep" in params:
            self._keep_kw = {"logits_to_keep": 1}
        elif "num_logits_to_keep" in params:
            self._keep_kw = {"num_logits_to_keep": 1}
        self._base_use_cache = "use_cache" in inspect.signature(self.base.forward).parameters
        self._want_compile = wanted(spec.compile, device) and not embedding_only
        self.static = bool(spec.static_cache) or self._want_compile
        self._pool = self._new_pool()
        self._decode_fn: Callable[..., Any] | None = None
        self.compiled = False
        self.load_secs = 0.0
        self._memory = MemoryProbe(device)
        self.grammars = Grammars(
            lambda: hf_vocabulary(tokenizer.backend(), self.eos_ids, self.logits_size), self.eos_ids
        )
        self.prefix = self._prefix_cache()
        self.batch, self.batch_refused = self._batching()
        self._decoded: dict[GenerationState, torch.Tensor | Exception] = {}
        self._prefilling: dict[GenerationState, int] = {}  # prompt tokens fed so far
        self._decoding = False  # whether others decode this step (a long prefill goes in chunks)
        self._crowded = False  # whether others are open this step (a prefill takes no pooled cache)
        self.prefill_chunk = PREFILL_CHUNK
        self.kv = KvBudget(0, 0, None, spec.max_batch, padded=self.batch is not None)

    def _batching(self) -> tuple[Batch | None, str | None]:
        """The decode batch, or why rows are stepped one at a time: a static one when the step
        is compiled, or eager on the CPU (measured faster there), if the model's layers allow."""
        if self.embedding_only:
            return None, None
        from transformers import DynamicCache

        config, eager = self.model.config, not self._want_compile
        fresh = DynamicCache(config=config)
        if why := refusal(fresh):
            return None, why
        eager_padded = eager and (one_size(self.device) or not EAGER_CPU)
        if eager_padded or static_refusal(fresh, config):
            return DecodeBatch(self.device, self._cache_kw), None
        graphs = not eager and one_size(self.device)  # CUDA graphs: one storage, the whole context
        top, cap = self.spec.max_batch, self._context_cap()
        return StaticBatch(self.device, config, self._cache_kw, top, cap, graphs, eager), None

    def _kv_budget(self, cache: Any) -> KvBudget:
        """KV bytes measured on the warm-up cache; the budget is `kv_budget_mb`, else 90 % of
        the memory free after load less the prefix cache's share."""
        per_token, per_row = kv_cost(cache)
        static = self.batch if isinstance(self.batch, StaticBatch) else None
        mb, kept = self.spec.kv_budget_mb, 0
        if mb is None:
            free = free_mb(self.device)
            prefix = self.prefix.budget // 2**20 if self.prefix is not None else 0
            mb = None if free is None else max(0, int(free * 0.9) - prefix)
            kept = static.nbytes() if static is not None else 0  # allocated already, not free
        budget = None if mb is None else mb * 2**20 + kept
        shape, padded = (static.held if static is not None else None), self.batch is not None
        return KvBudget(per_token, per_row, budget, self.spec.max_batch, padded, shape)

    def _new_pool(self) -> StaticPool | None:
        """Reused static caches when wanted: of the whole context for CUDA graphs."""
        if not self.static:
            return None
        fixed = self._want_compile and one_size(self.device)
        return StaticPool(self.model.config, self._context_cap(), fixed=fixed)

    def _prefix_cache(self) -> PrefixCache | None:
        """None for a zero budget, or for a hybrid on pooled static caches (its recurrent
        state is reused in place, so no snapshot of it could be written back)."""
        mb = self.spec.prefix_cache_mb
        if mb is None:
            mb = DEFAULT_MB.get(self.device.type, 0)
        if mb <= 0 or self.embedding_only:
            return None
        fresh, slot = self._new_cache(1)
        self._release_cache(fresh, slot)
        exact = not cuttable(fresh)
        return None if exact and self._pool is not None else PrefixCache(mb << 20, exact=exact)

    def _context_cap(self) -> int | None:
        caps = [self.max_position_embeddings]
        if self.spec.max_prompt_tokens and self.spec.max_output_tokens:
            caps.append(self.spec.max_prompt_tokens + self.spec.max_output_tokens)
        known = [c for c in caps if c]
        return min(known) if known else None

    @torch.inference_mode()
    def warmup(self) -> None:
        """One real forward (catches broken weights at load), and the compile."""
        tok = min(self.eos_ids) if self.eos_ids else 0
        if self.embedding_only:
            self.embed([[tok, tok]])
            return
        if self._want_compile and not self._compiled_warm(tok):
            self._eager_again()
        cache, slot = self._new_cache(4)
        try:
            logits = self._forward(torch.tensor([[tok, tok]], device=self.device), cache, False)
            self.logits_size = int(logits.shape[-1])
            if not bool(torch.isfinite(logits).all()):
                raise RuntimeError("the model produced non-finite logits on a warm-up forward")
            logits = self._forward(torch.tensor([[tok]], device=self.device), cache, True)
            if not bool(torch.isfinite(logits).all()):
                raise RuntimeError("the model produced non-finite logits on a warm-up step")
            self.kv = self._kv_budget(cache)
        finally:
            self._release_cache(cache, slot)
        self.grammars.prepare()  # the logits' size is known now

    def _compiled_warm(self, tok: int) -> bool:
        """Compile the decode step and build its graph with a few steps (so the compile is part
        of load_secs); False, warned, on any failure: the model then decodes eagerly."""
        t0 = time.monotonic()
        cache, slot = None, None
        try:
            faults = self.spec.test_faults
            if faults is not None and faults.compile_fails:
                raise RuntimeError("test fault: compile_fails")
            self._decode_fn = compile_step(self.model, self.device)
            cache, slot = self._new_cache(4)
            self._forward(torch.tensor([[tok, tok]], device=self.device), cache, False)
            for _ in range(3):
                self._forward(torch.tensor([[tok]], device=self.device), cache, True)
            batch, keep = self.batch, self._keep_kw
            if isinstance(batch, StaticBatch) and not batch.warm(
                self._decode_fn, cache, tok, **keep
            ):
                self.batch = DecodeBatch(self.device, self._cache_kw)  # the batch-1 step stays
        except Exception as e:
            log.warning(
                "compiling the decode step failed, decoding eagerly: %s: %s", type(e).__name__, e
            )
            self._decode_fn = None
            return False
        finally:
            self._release_cache(cache, slot)
        self.compiled = True
        log.info("compiled the decode step in %.1f s", time.monotonic() - t0)
        return True

    def _eager_again(self) -> None:
        """After a failed compile: the caches and decode paths of an eager model."""
        self._want_compile = False
        self.static = bool(self.spec.static_cache)
        self._pool = self._new_pool()
        self.prefix = self._prefix_cache()
        self.batch, self.batch_refused = self._batching()

    # ---- the model --------------------------------------------------------------------------

    def _new_cache(self, n_tokens: int, pooled: bool = True) -> tuple[Any, int | None]:
        if self._pool is not None and pooled:
            cache, size = self._pool.acquire(n_tokens)
            return cache, size
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config), None

    def _release_cache(self, cache: Any, slot: int | None) -> None:
        if self._pool is not None and slot is not None and cache is not None:
            self._pool.release(cache, slot)

    def _forward(self, ids: torch.Tensor, cache: Any, decode: bool) -> torch.Tensor:
        """Logits (fp32, shape (vocab,)) at the last position; the cache is updated in place."""
        kwargs = {self._cache_kw: cache, "use_cache": True, **self._keep_kw}
        if decode and self._decode_fn is not None:
            out = self._decode_fn(input_ids=ids, **kwargs)
            return out.logits[0, -1].to(torch.float32, copy=True)
        out = self.model(input_ids=ids, **kwargs)
        return out.logits[0, -1].to(torch.float32)

    # ---- the decode loop's hooks ------------------------------------------------------------

    @torch.inference_mode()
    def logits(self, state: GenerationState) -> torch.Tensor | None:
        if state.cache is None or state in self._prefilling:
            return self._prefill(state)
        got = self._decoded.pop(state, None)  # this step's batched forward
        if isinstance(got, Exception):
            raise got
        if got is not None:
            return got
        ids = torch.tensor([[state.token_ids[-1]]], device=self.device)
        # the compiled step only on a pooled cache (a dynamic one would recompile it)
        return self._forward(ids, state.cache, decode=state.slot is not None)

    def _prefill(self, state: GenerationState) -> torch.Tensor | None:
        """The prompt's forward, from the longest prefix the prefix cache holds; while others
        decode, a long one goes `prefill_chunk` tokens a step (None: no token yet)."""
        prompt, done = state.prompt, self._prefilling.pop(state, 0)
        if done:
            return self._feed_chunk(state, done)
        # pooled only to decode alone (a batch copies its rows out; on CUDA a pooled cache is
        # the whole context, which simultaneous arrivals can't all have)
        pooled = self._pool is not None and not (self._crowded and self.batch is not None)
        if pooled:
            state.cache, state.slot = self._new_cache(need(state))
        if self.prefix is not None:
            state.cache, done = self.prefix.take(prompt, into=state.cache)
            state.cached_tokens = done
        if state.cache is None:
            state.cache, state.slot = self._new_cache(need(state), pooled=False)
        return self._feed_chunk(state, done)

    def _feed_chunk(self, state: GenerationState, done: int) -> torch.Tensor | None:
        """Feed the prompt from `done`; a hybrid stops at each snapshot point to keep one."""
        prompt, prefix = state.prompt, self.prefix
        chunked = self.batch is not None and self._decoding
        while True:
            end = min(len(prompt), done + self.prefill_chunk) if chunked else len(prompt)
            stop = prefix.next_snapshot(prompt, done) if prefix is not None else None
            if stop is not None and stop < end:
                end = stop
            ids = torch.tensor([prompt[done:end]], device=self.device)
            logits = self._forward(ids, state.cache, False)
            if prefix is not None and end == stop:
                prefix.keep(prompt[:end], state.cache)
            done = end
            if done == len(prompt):
                return logits
            if chunked:
                self._prefilling[state] = done
                return None

    @torch.inference_mode()
    def pick(self, state: GenerationState, logits: torch.Tensor) -> int:
        sampler = state.sampler
        assert isinstance(sampler, Sampler)
        where = f"step {state.step_no} of request {state.id}"
        return pick_checked(sampler, logits, where, state.bias, state.constraint)

    def release(self, state: GenerationState) -> None:
        self._prefilling.pop(state, None)
        if self.batch is not None and state.cache is self.batch:  # a row leaves with its cache
            state.cache = state.cache.release(state, keep=self.prefix is not None)
        if self.prefix is not None and state.cache is not None:  # all but the last token fed
            held = len(state.prompt) + len(state.token_ids) - 1
            self.prefix.put((state.prompt + state.token_ids)[:held], state.cache)
        self._release_cache(state.cache, state.slot)

    # ---- requests ---------------------------------------------------------------------------

    def start(self, req: Generate) -> GenerationState:
        not_embedding_only(self.embedding_only, self.spec.served_id)
        prompt = check_ids(req.prompt_ids, self.vocab_size, "prompt_ids")
        check_length(len(prompt), self.spec.max_prompt_tokens)
        max_tokens = req.max_tokens
        if max_tokens is None:
            max_tokens = self.default_max_tokens(len(prompt))
        params = sampling_params(req.sampling, self.sampling_defaults)
        sampler = Sampler(
            params, vocab_size=self.logits_size, device=self.device, prompt_ids=prompt
        )
        state = open_generation(req, prompt, max_tokens, sampler, self.tokenizer)
        state.bias = logit_bias(req.sampling, self.vocab_size)
        state.constraint = self.grammars.open(req.constraint)
        return state

    def admits(self, state: GenerationState, running: list[GenerationState]) -> bool:
        return self.kv.admits(state, running)

    def _joining(self, state: GenerationState) -> Any:
        """The cache a generation joins the batch with; a pooled one goes back to the pool (a
        static batch copies it at once, before any prefill takes it; else a dynamic copy)."""
        if state.slot is None:  # its own dynamic cache
            return state.cache
        static = isinstance(self.batch, StaticBatch)
        own = state.cache if static else as_dynamic(state.cache, fed(state), self.model.config)
        self._release_cache(state.cache, state.slot)
        state.slot = None
        return own

    def step(self, active: list[GenerationState]) -> list[StepResult]:
        self._decoding = any(s.token_ids and not s.finished for s in active)
        self._crowded = sum(not s.finished for s in active) > 1
        static = isinstance(self.batch, StaticBatch)
        if self.batch is not None:
            self._decoded = self.batch.step(
                self._decode_fn if static and self._decode_fn is not None else self.model,
                active,
                keep=self.prefix is not None,
                own=self._joining,
                solo=static or self._decode_fn is not None,
                **self._keep_kw,
            )
        try:
            return generation.step(self, active)
        finally:
            self._decoded = {}
            if isinstance(self.batch, StaticBatch):
                self.batch.last_out(active, self._alone)

    def _alone(self, state: GenerationState) -> Any:
        """A pooled cache for a generation back on the compiled batch-1 step; None eager."""
        if self._decode_fn is None:
            return None
        cache, state.slot = self._new_cache(need(state))
        return cache

    def cancel(self, state: GenerationState) -> list[Event]:
        return generation.cancel(self, state)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def default_max_tokens(self, prompt_len: int) -> int:
        room = [
            c
            for c in (
                self.spec.max_output_tokens,
                (self.max_position_embeddings - prompt_len)
                if self.max_position_embeddings
                else None,
            )
            if c is not None
        ]
        return max(0, min(room)) if room else 16

    @torch.inference_mode()
    def embed(self, inputs: list[list[int]]) -> tuple[list[list[float]], int]:
        """Pooled (and, per the model, L2-normalised) vectors in input order (torch_embed), and
        the token count."""
        seqs = [check_ids(x, self.vocab_size, "inputs") for x in inputs]
        for s in seqs:
            check_length(len(s), self.spec.max_prompt_tokens)
        return by_length(seqs, self._embed_batch), sum(len(s) for s in seqs)

    def _embed_batch(self, batch: list[list[int]]) -> list[list[float]]:
        ids = torch.tensor(batch, device=self.device)
        kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(ids)}
        if self._base_use_cache:
            kwargs["use_cache"] = False
        h = self.base(input_ids=ids, **kwargs).last_hidden_state.to(torch.float32)
        pooled = torch.cat([pool_hidden(h, m) for m in self.pooling.modes], dim=-1)
        if self.pooling.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
        if not bool(torch.isfinite(pooled).all()):
            raise Fault("non_finite", "non-finite values in pooled embeddings")
        return [list(map(float, row)) for row in pooled.cpu().tolist()]

    # ---- measurements and failures ----------------------------------------------------------

    def memory_mb(self) -> int | None:
        """Measured, so it includes the prefix cache's entries (up to its budget)."""
        return self._memory.used_mb()

    def info(self) -> ReadyInfo:
        return ReadyInfo(
            vram_used_mb=self.memory_mb(),
            devices=list(self.spec.devices),
            harness="torch",
            quant=self.quant,
            dtype=str(self.dtype).removeprefix("torch."),
            max_position_embeddings=self.max_position_embeddings,
            capabilities=["embedding"] if self.embedding_only else ["text"],
            load_secs=self.load_secs,
            embedding_dim=self.hidden_size * len(self.pooling.modes),
            vocab_size=self.vocab_size,
            eos_token_ids=sorted(self.eos_ids),
            model_type=getattr(self.model.config, "model_type", None),
            static_cache=self.static,
            compiled=self.compiled,
            max_batch=self.kv.max_batch if self.batch is not None else 1,
            batching_refused=self.batch_refused,
        )

    def classify(self, exc: Exception) -> RequestError | Fault:
        if isinstance(exc, Fault | RequestError):
            return exc
        if self.device.type == "cuda" and is_cuda_error(exc):
            return Fault("cuda_error", f"{type(exc).__name__}: {exc}")
        if is_oom(exc):
            log.warning("out of memory on a request: %s", exc)
            if self.prefix is not None:
                self.prefix.clear()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            msg = f"out of memory while serving the request: {exc}".strip()
            return RequestError("insufficient_memory", msg)
        log.exception("a request failed", exc_info=exc)
        return RequestError("internal_error", f"{type(exc).__name__}: {exc}")
