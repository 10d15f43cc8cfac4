"""The torch engine: one model in this worker process, our own decode loop over it.

Prefill once, then one token per step through the transformers model with a KV cache
(`DynamicCache` by default; on CUDA a pooled `StaticCache` and a `torch.compile`d decode step when
the load spec asks for it). Each request is a `Generation` that the worker steps; several can be
open at once (the worker steps them round-robin), each with its own cache, sampler and
detokenizer. Logits are checked for non-finite values at every step on the sampled position.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from helexa.neuron.engine.detok import Detokenizer
from helexa.neuron.engine.loader import (
    FaultPlan,
    LoadError,
    LoadSpec,
    ModelDir,
    Pooling,
    load_failed,
)
from helexa.neuron.engine.sampling import (
    Sampler,
    SamplingError,
    defaults_from_generation_config,
    resolve,
)

log = logging.getLogger("helexa.neuron.engine")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1}
_MIN_STATIC = 256
_EMBED_BATCH_TOKENS = 16384

Progress = Callable[[dict[str, Any]], None]


class RequestError(Exception):
    """This request can't run; the worker answers with an `error` frame and carries on."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param

    def frame(self, rid: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"ev": "error", "id": rid, "code": self.code, "message": self.message}
        if self.param is not None:
            out["param"] = self.param
        return out


class Fault(Exception):
    """The model or device is broken (non-finite logits, CUDA error): the worker must exit."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail

    def frame(self) -> dict[str, Any]:
        return {"ev": "fault", "kind": self.kind, "detail": self.detail}


def default_quant(device: torch.device) -> str:
    """§2.14: bf16 on CUDA with compute capability >= 8.0, fp16 on older CUDA, fp32 on CPU."""
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return "bf16" if major >= 8 else "fp16"
    return "fp32"


def is_cuda_error(exc: BaseException) -> bool:
    """A device error that leaves the CUDA context unusable (unlike an out-of-memory)."""
    if is_oom(exc):
        return False
    name = type(exc).__name__
    text = str(exc)
    return name in ("AcceleratorError", "CudaError") or any(
        s in text for s in ("CUDA error", "CUBLAS_STATUS", "cuDNN error", "device-side assert")
    )


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError | MemoryError) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError)
    )


def rss_mb() -> int:
    """This process's resident set size in MB (Linux /proc; getrusage peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return max(1, pages * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024))
    except (OSError, ValueError, IndexError):
        import resource

        return max(1, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


def _mem_available_mb() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return None


class _Tokenizer:
    """A `tokenizers.Tokenizer` from tokenizer.json, or transformers' AutoTokenizer as fallback."""

    def __init__(self, path: Path) -> None:
        self._fast: Any = None
        self._hf: Any = None
        if (path / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            self._fast = Tokenizer.from_file(str(path / "tokenizer.json"))
        else:
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(str(path))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        if self._fast is not None:
            return str(self._fast.decode(ids, skip_special_tokens=skip_special_tokens))
        return str(self._hf.decode(ids, skip_special_tokens=skip_special_tokens))

    def encode(self, text: str) -> list[int]:
        if self._fast is not None:
            return list(self._fast.encode(text, add_special_tokens=False).ids)
        return list(self._hf.encode(text, add_special_tokens=False))

    def token_to_id(self, token: str) -> int | None:
        if self._fast is not None:
            tid = self._fast.token_to_id(token)
            return int(tid) if tid is not None else None
        tid = self._hf.convert_tokens_to_ids(token)
        return tid if isinstance(tid, int) and tid != self._hf.unk_token_id else None


class _StaticPool:
    """Reusable StaticCaches, so compiled graphs keep their tensor addresses.

    Sizes are powers of two (>= 256) up to the context cap; with `fixed` (the compiled path)
    every request that fits gets a cache of the full cap, so one graph, compiled at load,
    serves them all instead of a recompile per new size."""

    def __init__(self, config: Any, cap: int | None, *, fixed: bool = False) -> None:
        self.config = config
        self.cap = cap
        self.fixed = fixed and cap is not None
        self.free: dict[int, list[Any]] = {}

    def size_for(self, n: int) -> int:
        if self.cap is not None and (n >= self.cap or self.fixed):
            return max(n, self.cap)  # past the cap (the daemon clamps, so rare): exactly n
        size = max(_MIN_STATIC, 1 << max(0, n - 1).bit_length())
        return size if self.cap is None else min(size, self.cap)

    def acquire(self, n: int) -> tuple[Any, int]:
        from transformers import StaticCache

        size = self.size_for(n)
        spare = self.free.get(size)
        if spare:
            cache = spare.pop()
            cache.reset()
            return cache, size
        return StaticCache(config=self.config, max_cache_len=size), size

    def release(self, cache: Any, size: int) -> None:
        self.free.setdefault(size, []).append(cache)


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
    """A loaded model and everything needed to serve it from this process."""

    def __init__(
        self,
        spec: LoadSpec,
        model: Any,
        tokenizer: _Tokenizer,
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
        self.faults: FaultPlan | None = spec.test_faults
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
            _StaticPool(model.config, self._context_cap(), fixed=want_compile)
            if self.static
            else None
        )
        self._decode_fn: Callable[..., Any] | None = None
        self.compiled = False
        self.script: list[int] | None = None
        if self.faults and (self.faults.script_ids or self.faults.script_text):
            self.script = list(self.faults.script_ids or []) or tokenizer.encode(
                self.faults.script_text or ""
            )
        self.load_secs = 0.0
        self._nvml: Any = None
        self._nvml_handles: list[Any] | None = None

    # ---- loading ----------------------------------------------------------------------------

    @classmethod
    def load(cls, spec: LoadSpec, progress: Progress | None = None) -> TorchEngine:
        """Load per the spec; every failure is a LoadError with its §2.7 status and code."""
        t0 = time.monotonic()
        emit = progress or (lambda _f: None)
        if spec.test_faults and spec.test_faults.load_delay_secs:
            time.sleep(spec.test_faults.load_delay_secs)
        md = ModelDir(spec.path)
        device = _pick_device(spec)
        quant = spec.quant or default_quant(device)
        total = md.weight_bytes()
        emit({"ev": "progress", "phase": "load", "done_bytes": 0, "total_bytes": total})
        try:
            tok = _Tokenizer(md.path)
            model, embedding_only = _load_model(md, DTYPES[quant], device)
            pooling = md.sentence_pooling() or Pooling()
            eng = cls(
                spec,
                model,
                tok,
                md,
                device=device,
                quant=quant,
                embedding_only=embedding_only,
                pooling=pooling,
            )
            emit({"ev": "progress", "phase": "load", "done_bytes": total, "total_bytes": total})
            emit({"ev": "progress", "phase": "warmup", "done_bytes": None, "total_bytes": None})
            eng.warmup()
        except LoadError:
            raise
        except Exception as e:
            if is_oom(e):
                raise _insufficient(spec, md, quant, device) from e
            raise load_failed(spec.served_id, e) from e
        eng.load_secs = round(time.monotonic() - t0, 3)
        return eng

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
        cache, slot = self.new_cache(4)
        try:
            logits = self.forward(torch.tensor([[tok, tok]], device=self.device), cache, False)
            self.logits_size = int(logits.shape[-1])
            if not bool(torch.isfinite(logits).all()):
                raise RuntimeError("the model produced non-finite logits on a warm-up forward")
            for _ in range(3 if self._decode_fn is not None else 1):
                logits = self.forward(torch.tensor([[tok]], device=self.device), cache, True)
            if not bool(torch.isfinite(logits).all()):
                raise RuntimeError("the model produced non-finite logits on a warm-up step")
        finally:
            self.release_cache(cache, slot)

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

    def new_cache(self, n_tokens: int) -> tuple[Any, int | None]:
        if self._pool is not None:
            cache, size = self._pool.acquire(n_tokens)
            return cache, size
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.model.config), None
        except TypeError:  # older transformers
            return DynamicCache(), None

    def release_cache(self, cache: Any, slot: int | None) -> None:
        if self._pool is not None and slot is not None and cache is not None:
            self._pool.release(cache, slot)

    def forward(self, ids: torch.Tensor, cache: Any, decode: bool) -> torch.Tensor:
        """Logits (fp32, shape (vocab,)) at the last position; the cache is updated in place."""
        kwargs = {self._cache_kw: cache, "use_cache": True, **self._keep_kw}
        if decode and self._decode_fn is not None:
            out = self._decode_fn(input_ids=ids, **kwargs)
            return out.logits[0, -1].to(torch.float32, copy=True)
        out = self.model(input_ids=ids, **kwargs)
        return out.logits[0, -1].to(torch.float32)

    # ---- requests ---------------------------------------------------------------------------

    def start(self, frame: dict[str, Any]) -> Generation:
        """Validate a `generate` frame and open its Generation (no model work yet)."""
        rid = frame.get("id")
        if self.embedding_only:
            raise RequestError(
                "unsupported_model_capability",
                f"model '{self.spec.served_id}' is an embedding model; use /v1/embeddings",
            )
        prompt = self._check_ids(frame.get("prompt_ids"), "prompt_ids")
        cap = self.spec.max_prompt_tokens
        if cap is not None and len(prompt) > cap:
            raise RequestError(
                "context_length_exceeded",
                f"prompt is {len(prompt)} tokens; this neuron accepts at most {cap}",
            )
        max_tokens = frame.get("max_tokens")
        if max_tokens is None:
            max_tokens = self.default_max_tokens(len(prompt))
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
            raise RequestError(
                "invalid_value", "'max_tokens' must be an integer >= 0", "max_tokens"
            )
        try:
            params = resolve(frame.get("sampling"), self.sampling_defaults)
        except SamplingError as e:
            raise RequestError("invalid_value", str(e), e.field) from None
        stop = _strings(frame.get("stop"), "stop")
        hold = _strings(frame.get("hold"), "hold")
        return Generation(
            self,
            rid,
            prompt,
            max_tokens,
            Sampler(params, vocab_size=self.logits_size, device=self.device, prompt_ids=prompt),
            Detokenizer(self.tokenizer, stop=stop, hold=hold),
            want_ids=bool(frame.get("return_token_ids")),
        )

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

    def _check_ids(self, ids: Any, field: str) -> list[int]:
        if not isinstance(ids, list) or not ids:
            raise RequestError("invalid_value", f"'{field}' must be a non-empty list of token ids")
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab_size:
                raise RequestError(
                    "invalid_value",
                    f"'{field}' holds {t!r}, not a token id of this model "
                    f"(0..{self.vocab_size - 1})",
                    field,
                )
        return ids

    @torch.inference_mode()
    def embed(self, inputs: Any) -> tuple[list[list[float]], int]:
        """Pooled (and, per the model, L2-normalised) vectors in input order, and the token count.

        Inputs of equal length share a forward pass, so no padding ever touches the numbers; the
        same request always gives the same vectors (a different batch mix may move the last
        bits)."""
        if not isinstance(inputs, list) or not inputs:
            raise RequestError("invalid_value", "'inputs' must be a non-empty list", "inputs")
        seqs = [self._check_ids(x, "inputs") for x in inputs]
        cap = self.spec.max_prompt_tokens
        for s in seqs:
            if cap is not None and len(s) > cap:
                raise RequestError(
                    "context_length_exceeded",
                    f"prompt is {len(s)} tokens; this neuron accepts at most {cap}",
                )
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

    # ---- measurements -----------------------------------------------------------------------

    def vram_used_mb(self) -> int | None:
        """CUDA: NVML per-process memory over our devices (else torch's reserved bytes);
        CPU: this process's RSS."""
        if self.device.type != "cuda":
            return rss_mb()
        used = self._nvml_used()
        if used is not None:
            return used
        total = sum(torch.cuda.memory_reserved(i) for i in range(torch.cuda.device_count()))
        return max(1, total // (1024 * 1024))

    def _nvml_used(self) -> int | None:
        try:
            if self._nvml_handles is None:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
                handles = []
                for i in range(torch.cuda.device_count()):
                    uuid = str(torch.cuda.get_device_properties(i).uuid)
                    if not uuid.startswith("GPU-"):
                        uuid = "GPU-" + uuid
                    handles.append(pynvml.nvmlDeviceGetHandleByUUID(uuid))
                self._nvml_handles = handles
            pid = os.getpid()
            total = 0
            found = False
            for h in self._nvml_handles:
                for p in self._nvml.nvmlDeviceGetComputeRunningProcesses(h):
                    if p.pid == pid and p.usedGpuMemory:
                        total += int(p.usedGpuMemory)
                        found = True
            return max(1, total // (1024 * 1024)) if found else None
        except Exception:
            self._nvml_handles = []
            return None

    def info(self) -> dict[str, Any]:
        """`ready.info`."""
        return {
            "vram_used_mb": self.vram_used_mb(),
            "devices": list(self.spec.devices),
            "harness": "torch",
            "quant": self.quant,
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_position_embeddings": self.max_position_embeddings,
            "capabilities": ["embedding"] if self.embedding_only else ["text"],
            "load_secs": self.load_secs,
            "embedding_dim": self.hidden_size * len(self.pooling.modes),
            "vocab_size": self.vocab_size,
            "eos_token_ids": sorted(self.eos_ids),
            "model_type": getattr(self.model.config, "model_type", None),
            "static_cache": self.static,
            "compiled": self.compiled,
        }

    def fault_armed(self) -> bool:
        """Whether a step fault may fire now; an arm file makes it one-shot (consumed)."""
        f = self.faults
        if f is None:
            return False
        if f.arm_file is None:
            return True
        try:
            os.unlink(f.arm_file)
            return True
        except FileNotFoundError:
            return False


class Generation:
    """One request: prefill on the first step, then one token per step until EOS, a stop
    string or `max_tokens`. `step` returns the frames to send."""

    def __init__(
        self,
        engine: TorchEngine,
        rid: Any,
        prompt: list[int],
        max_tokens: int,
        sampler: Sampler,
        detok: Detokenizer,
        *,
        want_ids: bool = False,
    ) -> None:
        self.engine = engine
        self.id = rid
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.sampler = sampler
        self.detok = detok
        self.want_ids = want_ids
        self.token_ids: list[int] = []
        self.finished = False
        self.keep_logits = False
        self.last_logits: torch.Tensor | None = None
        self._uncovered = 0
        self._cache: Any = None
        self._slot: int | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @torch.inference_mode()
    def step(self) -> list[dict[str, Any]]:
        if self.finished:
            return []
        eng = self.engine
        k = len(self.token_ids)
        if k >= self.max_tokens:
            return self._finish("length")
        faults = eng.faults
        if faults is not None:
            if faults.step_delay_secs:
                time.sleep(faults.step_delay_secs)
            if faults.exit_at_step == k and eng.fault_armed():
                log.error("test fault: killing the worker at step %d", k)
                os.kill(os.getpid(), signal.SIGKILL)
        if self._cache is None:
            self._cache, self._slot = eng.new_cache(len(self.prompt) + self.max_tokens)
            ids = torch.tensor([self.prompt], device=eng.device)
            logits = eng.forward(ids, self._cache, decode=False)
        else:
            ids = torch.tensor([[self.token_ids[-1]]], device=eng.device)
            logits = eng.forward(ids, self._cache, decode=True)
        if faults is not None and faults.non_finite_at_step == k and eng.fault_armed():
            logits = logits.clone()
            logits[0] = math.nan
        if self.keep_logits:
            self.last_logits = logits
        picked = self.sampler.sample(logits)
        finite = torch.isfinite(logits).all()
        tok, ok = torch.stack([picked.to(torch.int64), finite.to(torch.int64)]).tolist()
        if not ok:
            raise Fault("non_finite", f"non-finite logits at step {k} of request {self.id!s}")
        if eng.script is not None:
            tok = eng.script[k] if k < len(eng.script) else min(eng.eos_ids, default=tok)
        self.token_ids.append(tok)
        if tok in eng.eos_ids:
            return self._finish("stop")
        self.sampler.observe(tok)
        self._uncovered += 1
        text = self.detok.push(tok)
        frames: list[dict[str, Any]] = []
        if text:
            frames.append(self._delta(text))
        if self.detok.stop_reason is not None:
            return frames + self._finish("stop", flush=False)
        if len(self.token_ids) >= self.max_tokens:
            return frames + self._finish("length")
        return frames

    def _delta(self, text: str) -> dict[str, Any]:
        n, self._uncovered = self._uncovered, 0
        return {"ev": "delta", "id": self.id, "text": text, "tokens": n}

    def _finish(self, reason: str, *, flush: bool = True) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        if flush:
            tail = self.detok.flush()
            if tail:
                frames.append(self._delta(tail))
        if self.detok.stop_reason is not None:
            reason = "stop"
        frames.append(self._done(reason, self.detok.stop_reason))
        return frames

    def _done(self, reason: str, stop_reason: str | None) -> dict[str, Any]:
        self.finished = True
        self.engine.release_cache(self._cache, self._slot)
        self._cache = None
        done: dict[str, Any] = {
            "ev": "done",
            "id": self.id,
            "finish_reason": reason,
            "stop_reason": stop_reason,
            "completion_tokens": self.completion_tokens,
        }
        if self.want_ids:
            done["token_ids"] = list(self.token_ids)
        return done

    def cancel(self) -> list[dict[str, Any]]:
        """The client went away: stop now, send no more text, one `done` "cancelled"."""
        if self.finished:
            return []
        return [self._done("cancelled", None)]


def _strings(v: Any, field: str) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return v
    raise RequestError("invalid_value", f"'{field}' must be a string or a list of strings", field)


def _pick_device(spec: LoadSpec) -> torch.device:
    if spec.device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise LoadError(
            500,
            "load_failed",
            f"loading '{spec.served_id}' failed: RuntimeError: CUDA is not available to this "
            f"worker (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
        )
    return torch.device("cuda", 0)


def _load_model(md: ModelDir, dtype: torch.dtype, device: torch.device) -> tuple[Any, bool]:
    """(model, embedding_only). A sentence-transformers directory, or a config with no causal-LM
    class (an encoder), loads as a bare AutoModel for embeddings only."""
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"dtype": dtype}
    if device.type == "cuda":
        multi = torch.cuda.device_count() > 1
        if multi and _has_accelerate():
            kwargs["device_map"] = "auto"
        else:
            if multi:
                log.warning("several GPUs visible but accelerate is missing; using cuda:0 only")
            kwargs["device_map"] = {"": 0}
    path = str(md.path)
    if md.sentence_pooling() is not None:
        return AutoModel.from_pretrained(path, **kwargs).eval(), True
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval(), False
    except ValueError as e:
        if "Unrecognized configuration class" not in str(e):
            raise
    return AutoModel.from_pretrained(path, **kwargs).eval(), True


def _has_accelerate() -> bool:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return False
    return True


def _insufficient(spec: LoadSpec, md: ModelDir, quant: str, device: torch.device) -> LoadError:
    """507 for an out-of-memory while loading, with the §2.7 message and extras."""
    stored = md.config.get("torch_dtype") or md.config.get("dtype") or "bfloat16"
    ratio = _DTYPE_BYTES[str(DTYPES[quant]).removeprefix("torch.")] / _DTYPE_BYTES.get(
        str(stored), 2
    )
    required = int(md.weight_bytes() * ratio * 1.1) // (1024 * 1024)
    free: int | None
    if device.type == "cuda":
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()
        try:
            free = sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())) // (
                1024 * 1024
            )
        except Exception:
            free = None
    else:
        free = _mem_available_mb()
    devices = ",".join(str(d) for d in spec.devices)
    return LoadError(
        507,
        "insufficient_memory",
        f"model '{spec.served_id}' needs about {required} MB but only {free} MB is free "
        f"on device(s) {devices}",
        {"required_mb": required, "free_mb": free},
    )
