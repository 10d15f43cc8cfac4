"""A GGUF model and its contexts through llama-cpp-python's low-level (ctypes) API.

The engine needs token-level control (its own decode loop, per-request KV sequences, raw logits),
which the high-level `Llama` class hides; this wraps exactly the calls it uses.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as L
import numpy as np

# The KV cache types a load spec may ask for.
KV_TYPES = {"f16": L.GGML_TYPE_F16, "q8_0": L.GGML_TYPE_Q8_0, "q4_0": L.GGML_TYPE_Q4_0}
# llama.cpp file types → the quant name /v1/models shows.
_FTYPES = {
    v: k.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_ALL_")
    for k, v in vars(L).items()
    if k.startswith("LLAMA_FTYPE_") and k != "LLAMA_FTYPE_GUESSED" and isinstance(v, int)
}
_POOLING = {
    L.LLAMA_POOLING_TYPE_MEAN: "mean",
    L.LLAMA_POOLING_TYPE_CLS: "cls",
    L.LLAMA_POOLING_TYPE_LAST: "lasttoken",
}


class DecodeFull(RuntimeError):
    """llama_decode found no KV room for the batch (return code 1)."""


def _quiet(_level: int, _text: bytes, _user: Any) -> None:
    return None


_QUIET = L.llama_log_callback(_quiet)
_backend_ready = False


def _backend() -> None:
    global _backend_ready
    if not _backend_ready:
        if not os.environ.get("HELEXA_LLAMA_LOG"):
            L.llama_log_set(_QUIET, ctypes.c_void_p(0))
        L.llama_backend_init()
        _backend_ready = True


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the layers go: `gpu_layers` (-1 all, 0 none) split over devices by `split`."""

    gpu_layers: int = 0
    split: tuple[float, ...] = ()


class GgufModel:
    """The weights and vocabulary of one GGUF file (split files: the first part)."""

    def __init__(self, path: Path, placement: Placement, *, vocab_only: bool = False) -> None:
        _backend()
        params = L.llama_model_default_params()
        params.n_gpu_layers = placement.gpu_layers
        params.vocab_only = vocab_only
        self._split = None
        if placement.split:
            self._split = (ctypes.c_float * len(placement.split))(*placement.split)
            params.tensor_split = self._split
        model = L.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise RuntimeError(f"llama.cpp could not load {path.name}")
        self.ptr = model
        self.vocab = L.llama_model_get_vocab(model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self.vocab))
        self.n_embd = int(L.llama_model_n_embd(model))
        self.n_ctx_train = int(L.llama_model_n_ctx_train(model))
        self.size_bytes = int(L.llama_model_size(model))
        # a recurrent state per sequence (Mamba-like, or hybrid as Qwen3-Next and Qwen3.5)
        self.recurrent = bool(L.llama_model_is_recurrent(model) or L.llama_model_is_hybrid(model))
        self._pieces: dict[tuple[int, bool], bytes] = {}

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = L.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    @property
    def arch(self) -> str | None:
        return self.meta("general.architecture")

    @property
    def quant(self) -> str:
        ftype = self.meta("general.file_type")
        return _FTYPES.get(int(ftype), "unknown") if ftype and ftype.isdigit() else "unknown"

    def pooling(self) -> str | None:
        """The pooling the GGUF declares for embeddings (`{arch}.pooling_type`), if any."""
        v = self.meta(f"{self.arch}.pooling_type")
        return _POOLING.get(int(v)) if v and v.isdigit() else None

    def eos_ids(self) -> frozenset[int]:
        """Every end-of-generation token of the vocabulary (eos, eot, <|im_end|>, ...)."""
        return frozenset(t for t in range(self.n_vocab) if L.llama_vocab_is_eog(self.vocab, t))

    def tokenize(self, text: str) -> list[int]:
        raw = text.encode()
        cap = len(raw) + 8
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(self.vocab, raw, len(raw), buf, cap, False, True)
        if n < 0:
            cap = -n
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, raw, len(raw), buf, cap, False, True)
        return list(buf[:n])

    def piece(self, token: int, special: bool) -> bytes:
        key = (token, special)
        got = self._pieces.get(key)
        if got is None:
            buf = ctypes.create_string_buffer(256)
            n = L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            got = buf.raw[: max(n, 0)]
            self._pieces[key] = got
        return got

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """The text of `ids` (the detokenizer's Decoder)."""
        raw = b"".join(self.piece(t, not skip_special_tokens) for t in ids)
        return raw.decode("utf-8", "replace")

    def close(self) -> None:
        if self.ptr:
            L.llama_model_free(self.ptr)
            self.ptr = None


@dataclass(frozen=True, slots=True)
class ContextConfig:
    n_ctx: int
    n_seq: int = 1
    threads: int = 1
    kv_type: str = "f16"
    embeddings: bool = False
    pooling: int = L.LLAMA_POOLING_TYPE_UNSPECIFIED  # embeddings: UNSPECIFIED = the file's
    n_batch: int = 512


class Context:
    """One llama_context: KV sequences over a unified cache, batched decode, logits out."""

    def __init__(self, model: GgufModel, cfg: ContextConfig) -> None:
        p = L.llama_context_default_params()
        p.n_ctx = cfg.n_ctx
        p.n_batch = cfg.n_batch
        p.n_ubatch = cfg.n_batch
        p.n_seq_max = cfg.n_seq
        p.n_threads = p.n_threads_batch = cfg.threads
        p.type_k = p.type_v = KV_TYPES[cfg.kv_type]
        p.kv_unified = True
        p.embeddings = cfg.embeddings
        p.no_perf = True
        if cfg.embeddings:
            p.pooling_type = cfg.pooling
        ctx = L.llama_init_from_model(model.ptr, p)
        if not ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.ptr = ctx
        self.model = model
        self.cfg = cfg
        self.n_ctx = int(L.llama_n_ctx(ctx))
        self.mem = L.llama_get_memory(ctx)
        self._batch = L.llama_batch_init(cfg.n_batch, 0, 1)

    def forget(self, seq: int, start: int = 0) -> bool:
        """Drop the KV cells of `seq` from position `start` on; False when the memory can't be
        cut there (a recurrent state, as in hybrid models, only drops whole)."""
        return bool(L.llama_memory_seq_rm(self.mem, seq, start, -1))

    def feed(self, seq: int, tokens: list[int], start: int, *, last_logits: bool = True) -> None:
        """Decode `tokens` at positions start.. of `seq`, in batches of n_batch."""
        b = self._batch
        nb = self.cfg.n_batch
        for off in range(0, len(tokens), nb):
            chunk = tokens[off : off + nb]
            b.n_tokens = len(chunk)
            for i, t in enumerate(chunk):
                b.token[i] = t
                b.pos[i] = start + off + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq
                b.logits[i] = 0
            if last_logits and off + nb >= len(tokens):
                b.logits[len(chunk) - 1] = 1
            rc = L.llama_decode(self.ptr, b)
            if rc == 1:
                self.forget(seq, start)
                raise DecodeFull("no room in the KV cache")
            if rc != 0:
                raise RuntimeError(f"llama_decode failed ({rc})")

    def feed_each(self, items: list[tuple[int, int, int]]) -> None:
        """Decode one token for each (seq, token, position) in one batch, logits for all."""
        b = self._batch
        b.n_tokens = len(items)
        for i, (seq, tok, pos) in enumerate(items):
            b.token[i] = tok
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = 1
        rc = L.llama_decode(self.ptr, b)
        if rc == 1:
            for seq, _, pos in items:
                self.forget(seq, pos)
            raise DecodeFull("no room in the KV cache")
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")

    def logits(self, i: int = -1) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The logits of the batch's i-th output (the last by default): a writable view of
        llama.cpp's buffer, overwritten by the next decode."""
        ptr = L.llama_get_logits_ith(self.ptr, i)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,))

    def pooled(self, seq: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        ptr = L.llama_get_embeddings_seq(self.ptr, seq)
        if not ptr:
            raise RuntimeError("llama.cpp returned no pooled embedding")
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_embd,)).copy()

    def close(self) -> None:
        if self.ptr:
            L.llama_batch_free(self._batch)
            L.llama_free(self.ptr)
            self.ptr = None
