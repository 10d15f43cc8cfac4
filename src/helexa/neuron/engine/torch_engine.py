"""The torch engine: one transformers model in this worker process, stepped by our own loop.

Prefill once, then one token per step with a KV cache (`DynamicCache` by default; a pooled
`StaticCache`, and on CUDA a `torch.compile`d decode step, when the load spec asks for it). Each
request keeps its own cache, sampler and detokenizer in its `GenerationState`; the loop itself is
`generation.step`. Logits are checked for non-finite values at every step.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Callable
from typing import Any

import torch

from helexa.neuron.engine import generation
from helexa.neuron.engine.errors import Fault, RequestError
from helexa.neuron.engine.frames import Event, Generate, ReadyInfo
from helexa.neuron.engine.generation import GenerationState, StepResult
from helexa.neuron.engine.loader import LoadSpec, ModelDir, Pooling
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
from helexa.neuron.engine.torch_device import DTYPES, MemoryProbe, is_cuda_error, is_oom

log = logging.getLogger("helexa.neuron.engine")

_EMBED_BATCH_TOKENS = 16384


def _pool(h: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool hidden states (batch, seq, dim) of unpadded sequences."""
    if mode == "lasttoken":
        return h[:, -1]
    if mode == "cls":
        return h[:, 0]
    if mode == "mean":
        return h.mean(dim=1)
    if mode == "max":
        return h.max(dim=1).values
    if mode == "mean_sqrt_len_tokens":
        return h.sum(dim=1) / math.sqrt(h.shape[1])
    if mode == "weightedmean":
        w = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype)
        return (h * w[None, :, None]).sum(dim=1) / w.sum()
    raise ValueError(f"pooling mode '{mode}' is not supported")


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
        want_compile = spec.compile and device.type == "cuda"
        if spec.compile and not want_compile:
            log.info("compile is only used on CUDA; decoding eagerly on %s", device)
        self.static = bool(spec.static_cache) or want_compile
        self._pool = (
            StaticPool(model.config, self._context_cap(), fixed=want_compile)
            if self.static
            else None
        )
        self._decode_fn: Callable[..., Any] | None = None
        self.compiled = False
        self.load_secs = 0.0
        self._memory = MemoryProbe(device)

    def _context_cap(self) -> int | None:
        caps = [self.max_position_embeddings]
        if self.spec.max_prompt_tokens and self.spec.max_output_tokens:
            caps.append(self.spec.max_prompt_tokens + self.spec.max_output_tokens)
        known = [c for c in caps if c]
        return min(known) if known else None

    @torch.inference_mode()
    def warmup(self) -> None:
        """One real forward (catches broken weights at load), and the compile on CUDA."""
        tok = min(self.eos_ids) if self.eos_ids else 0
        if self.embedding_only:
            self.embed([[tok, tok]])
            return
        if self.spec.compile and self.device.type == "cuda":
            self._try_compile()
        cache, slot = self._new_cache(4)
        try:
            logits = self._forward(torch.tensor([[tok, tok]], device=self.device), cache, False)
            self.logits_size = int(logits.shape[-1])
            if not bool(torch.isfinite(logits).all()):
                raise RuntimeError("the model produced non-finite logits on a warm-up forward")
            for _ in range(3 if self._decode_fn is not None else 1):
                logits = self._forward(torch.tensor([[tok]], device=self.device), cache, True)
            if not bool(torch.isfinite(logits).all()):
                raise RuntimeError("the model produced non-finite logits on a warm-up step")
        finally:
            self._release_cache(cache, slot)

    def _try_compile(self) -> None:
        """torch.compile the decode step (reduce-overhead: CUDA graphs); eager on any failure."""
        try:
            import triton  # noqa: F401  (inductor needs it on CUDA)

            with contextlib.suppress(Exception):
                dyn = torch._dynamo.config
                name = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"
                setattr(dyn, name, max(getattr(dyn, name), 64))
            self._decode_fn = torch.compile(
                self.model.__call__, mode="reduce-overhead", fullgraph=False, dynamic=False
            )
            self.compiled = True
        except Exception as e:  # pragma: no cover - CUDA only
            log.warning("torch.compile unavailable, decoding eagerly: %s", e)
            self._decode_fn = None
            self.compiled = False

    # ---- the model --------------------------------------------------------------------------

    def _new_cache(self, n_tokens: int) -> tuple[Any, int | None]:
        if self._pool is not None:
            cache, size = self._pool.acquire(n_tokens)
            return cache, size
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config), None
        except TypeError:  # older transformers
            return DynamicCache(), None

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
    def logits(self, state: GenerationState) -> torch.Tensor:
        if state.cache is None:
            state.cache, state.slot = self._new_cache(len(state.prompt) + state.max_tokens)
            ids = torch.tensor([state.prompt], device=self.device)
            return self._forward(ids, state.cache, decode=False)
        ids = torch.tensor([[state.token_ids[-1]]], device=self.device)
        return self._forward(ids, state.cache, decode=True)

    @torch.inference_mode()
    def pick(self, state: GenerationState, logits: torch.Tensor) -> int:
        sampler = state.sampler
        assert isinstance(sampler, Sampler)
        return pick_checked(sampler, logits, f"step {state.step_no} of request {state.id}")

    def release(self, state: GenerationState) -> None:
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
        return open_generation(req, prompt, max_tokens, sampler, self.tokenizer)

    def step(self, active: list[GenerationState]) -> list[StepResult]:
        return generation.step(self, active)

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
        """Pooled (and, per the model, L2-normalised) vectors in input order, and the token count.

        Inputs of equal length share a forward pass, so no padding ever touches the numbers; the
        same request always gives the same vectors (a different batch mix may move the last
        bits)."""
        seqs = [check_ids(x, self.vocab_size, "inputs") for x in inputs]
        for s in seqs:
            check_length(len(s), self.spec.max_prompt_tokens)
        unique = list(dict.fromkeys(tuple(s) for s in seqs))  # duplicates computed once
        by_len: dict[int, list[tuple[int, ...]]] = {}
        for u in unique:
            by_len.setdefault(len(u), []).append(u)
        found: dict[tuple[int, ...], list[float]] = {}
        for n, group in sorted(by_len.items()):
            per = max(1, _EMBED_BATCH_TOKENS // n)
            for j in range(0, len(group), per):
                chunk = group[j : j + per]
                for u, v in zip(chunk, self._embed_batch([list(c) for c in chunk]), strict=True):
                    found[u] = v
        return [found[tuple(s)] for s in seqs], sum(len(s) for s in seqs)

    def _embed_batch(self, batch: list[list[int]]) -> list[list[float]]:
        ids = torch.tensor(batch, device=self.device)
        kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(ids)}
        if self._base_use_cache:
            kwargs["use_cache"] = False
        h = self.base(input_ids=ids, **kwargs).last_hidden_state.to(torch.float32)
        pooled = torch.cat([_pool(h, m) for m in self.pooling.modes], dim=-1)
        if self.pooling.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
        if not bool(torch.isfinite(pooled).all()):
            raise Fault("non_finite", "non-finite values in pooled embeddings")
        return [list(map(float, row)) for row in pooled.cpu().tolist()]

    # ---- measurements and failures ----------------------------------------------------------

    def memory_mb(self) -> int | None:
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
        )

    def classify(self, exc: Exception) -> RequestError | Fault:
        if isinstance(exc, Fault | RequestError):
            return exc
        if self.device.type == "cuda" and is_cuda_error(exc):
            return Fault("cuda_error", f"{type(exc).__name__}: {exc}")
        if is_oom(exc):
            log.warning("out of memory on a request: %s", exc)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            msg = f"out of memory while serving the request: {exc}".strip()
            return RequestError("insufficient_memory", msg)
        log.exception("a request failed", exc_info=exc)
        return RequestError("internal_error", f"{type(exc).__name__}: {exc}")
