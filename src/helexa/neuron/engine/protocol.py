"""Frames between the neuron daemon and a worker process (one per loaded model), typed.

Every frame is a class in `frames.py`; `encode` and the `decode_*` functions here are the only
code that reads or writes frame dicts.

Transport: a Unix socketpair; the worker gets its end as an inherited fd. Each frame is a 4-byte
big-endian length followed by one orjson-encoded object. The daemon side is asyncio; the worker
side is blocking (a reader thread feeds the generation loop).

Daemon -> worker (`op`):
  load      {"op":"load","spec":LoadSpec}                       first frame, exactly once
  generate  {"op":"generate","id","prompt_ids":[int],"max_tokens":int,
             "sampling":{"temperature","top_p","top_k","min_p","repetition_penalty",
                         "presence_penalty","frequency_penalty","seed"},   (absent = default)
             "stop":[str], "hold":[str]}   hold: marker strings (e.g. "<think>") the worker may
                                           emit only whole, never split across deltas
            sampling.logit_bias: {"<token id>": bias in [-100, 100]} added to the logits
                                           (-100 bans the token)
            "constraint":{"grammar":str,"after":str|None}   optional: the output must match
                                           the llguidance grammar (Lark; %json{...} inline) as
                                           the detokenizer shows it: quoted text such as
                                           "<tool_call>" matches the added token too; before
                                           `after` (e.g. "</think>") all but EOS is free. The
                                           grammar complete → "stop"; one that won't compile
                                           → error invalid_value (param "constraint")
  cancel    {"op":"cancel","id"}
  embed     {"op":"embed","id","inputs":[[int]]}
  ping      {"op":"ping","id"}
  shutdown  {"op":"shutdown"}

Worker -> daemon (`ev`):
  progress  {"ev":"progress","phase":"download"|"load"|"warmup","done_bytes","total_bytes"}
  ready     {"ev":"ready","info":{"vram_used_mb","devices","harness","quant","dtype",
             "max_position_embeddings","capabilities","load_secs"}}
  load_failed {"ev":"load_failed","status":int,"code":str,"message":str}   then the worker exits
  delta     {"ev":"delta","id","text":str,"tokens":int}   text never ends inside a UTF-8
                                           character, a stop string or a `hold` marker
  done      {"ev":"done","id","finish_reason":"stop"|"length","stop_reason":str|None,
             "completion_tokens":int,"cached_tokens":int}   cached_tokens: prompt tokens
                                           whose KV state was reused (left out when 0)
  error     {"ev":"error","id","code":str,"message":str}   this request failed, worker is fine
  embedding {"ev":"embedding","id","vectors":[[float]],"prompt_tokens":int}
  pong      {"ev":"pong","id","vram_used_mb":int|None}
  fault     {"ev":"fault","kind":"non_finite"|"cuda_error","detail":str}   then the worker exits

LoadSpec (helexa.neuron.engine.loader.LoadSpec; checked by the worker before torch loads):
  path               local model directory (hub ids are resolved by the daemon)   required
                     (llamacpp: a .gguf file, or a directory whose GGUF `quant` picks)
  harness            "torch" | "llamacpp"                                          default torch
  served_id          id used in messages                                          default path
  quant              "bf16"|"fp16"|"fp32"|null; null → bf16 on CUDA cc >= 8, fp16 on older CUDA,
                     fp32 on CPU. int8/int4/q4k/q5k/q6k/q8_0 → 400 unsupported_quant
                     "... yet; use 'bf16'"; GGUF types (Q4_K_M, ...) → 400 "... is a GGUF type ..."
  device             "cpu"|"cuda"; CUDA uses what CUDA_VISIBLE_DEVICES shows (cuda:0, or
                     device_map "auto" over several when accelerate is installed)
  devices            host indices, echoed in ready.info and the 507 message        default [0]
  max_prompt_tokens  longer prompt / embed input → error context_length_exceeded    optional
  max_output_tokens  max_tokens when a generate frame has none                     optional
  static_cache       pooled StaticCache instead of DynamicCache (any device)       default false
  prefix_cache_mb    torch: KV of recent sequences a new prompt starts from (torch_prefix);
                     0 off; none for a hybrid on static caches    default 1024 CUDA, 512 CPU
  compile            "auto"|"on"|"off" (true/false: on/off): static cache of the whole context
                     + torch.compile'd batch-1 decode step (CUDA: reduce-overhead), compiled at
                     load, eager if that fails; auto = on for CUDA, off on CPU  default auto
  max_batch          torch: generations decoded together in one forward            default 8
  kv_budget_mb       torch: bound on their KV (each row counted at the longest row's
                     prompt + max_tokens); a generation over it waits in the worker until
                     another ends. Default: 90 % of the memory free after load
  llamacpp only:     gguf_files (every shard, default from path), n_ctx (KV cells of all
                     sequences; default the trained context up to 8192), n_gpu_layers (-1 all;
                     default -1 on cuda), tensor_split, kv_cache_type f16|q8_0|q4_0
  n_threads          compute threads (torch.set_num_threads; llama.cpp's n_threads); the
                     daemon sends its share of the cores. Default: every core it may use
  test_faults        honoured only with HELEXA_TEST_FAULTS=1 in the worker's env (FaultPlan):
                     non_finite_at_step, exit_at_step (SIGKILL), arm_file (one-shot),
                     load_delay_secs, step_delay_secs, script_text / script_ids (every
                     request emits these tokens, then EOS), compile_fails (the compile raises)

Engine details the daemon relies on:
- Every generate ends with exactly one `done` or `error`. After `cancel` no more deltas come and
  the request ends with `done` finish_reason "cancelled" (cancel of an unknown or finished id is
  ignored). EOS and stop strings give "stop" (stop_reason = the string, cut from the text);
  max_tokens gives "length" (max_tokens 0 → done at once, no model call).
- completion_tokens counts every sampled token, EOS included; sum(delta.tokens) <= it (EOS and
  tokens whose text a stop string removed are in no delta). generate may ask
  "return_token_ids": true to get them as done.token_ids.
- error codes: invalid_value (+ param), context_length_exceeded, unsupported_model_capability
  (generate on an embedding-only model), insufficient_memory (OOM in a request), unknown_op,
  internal_error. load_failed may carry "extras" ({"required_mb","free_mb"} with 507).
- ready.info also has embedding_dim, vocab_size, eos_token_ids, model_type, static_cache,
  compiled, max_batch and batching_refused (torch); capabilities is ["embedding"] for
  sentence-transformers dirs and encoders.
- Open requests advance one token each per step: torch decodes them in one batched forward (a
  new one is prefilled alone, 512 tokens a step while others decode, and joins at the next
  step), llamacpp in one llama_decode. A
  generate over max_batch or the KV budget waits in the worker (FIFO) until another ends.
  `ping` is answered by the reader thread even mid-generation. Exit codes: 0 on shutdown or
  socket close, 1 after load_failed or fault.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from helexa.neuron.engine.errors import RequestError
from helexa.neuron.engine.frames import (
    Cancel,
    Constraint,
    Delta,
    Done,
    Embed,
    Embedding,
    Error,
    Event,
    FaultReport,
    Generate,
    Load,
    LoadFailed,
    Op,
    Ping,
    Pong,
    Progress,
    Ready,
    ReadyInfo,
    Shutdown,
)
from helexa.neuron.engine.loader import LoadSpec

_LEN = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024


class ProtocolError(Exception):
    """The peer sent something that isn't a frame, or went away mid-frame."""


# ---- encoding -----------------------------------------------------------------------------------


def _wire(frame: Op | Event) -> dict[str, Any]:
    """The frame as its JSON object; optional fields that are unset are left out."""
    match frame:
        case Delta():  # the per-token frame first
            return {"ev": "delta", "id": frame.id, "text": frame.text, "tokens": frame.tokens}
        case Done():
            done: dict[str, Any] = {
                "ev": "done",
                "id": frame.id,
                "finish_reason": frame.finish_reason,
                "stop_reason": frame.stop_reason,
                "completion_tokens": frame.completion_tokens,
            }
            if frame.token_ids is not None:
                done["token_ids"] = frame.token_ids
            if frame.cached_tokens:
                done["cached_tokens"] = frame.cached_tokens
            return done
        case Generate():
            gen: dict[str, Any] = {
                "op": "generate",
                "id": frame.id,
                "prompt_ids": frame.prompt_ids,
                "max_tokens": frame.max_tokens,
                "stop": frame.stop,
                "hold": frame.hold,
            }
            if frame.sampling is not None:
                gen["sampling"] = frame.sampling
            if frame.return_token_ids:
                gen["return_token_ids"] = True
            if frame.constraint is not None:
                gen["constraint"] = {
                    "grammar": frame.constraint.grammar,
                    "after": frame.constraint.after,
                }
            return gen
        case Error():
            err: dict[str, Any] = {
                "ev": "error",
                "id": frame.id,
                "code": frame.code,
                "message": frame.message,
            }
            if frame.param is not None:
                err["param"] = frame.param
            return err
        case LoadFailed():
            out: dict[str, Any] = {
                "ev": "load_failed",
                "status": frame.status,
                "code": frame.code,
                "message": frame.message,
            }
            if frame.extras:
                out["extras"] = frame.extras
            return out
        case Load():
            return {"op": "load", "spec": frame.spec.wire()}
        case Cancel() | Ping():
            return {"op": "cancel" if isinstance(frame, Cancel) else "ping", "id": frame.id}
        case Embed():
            return {"op": "embed", "id": frame.id, "inputs": frame.inputs}
        case Shutdown():
            return {"op": "shutdown"}
        case Progress():
            return {
                "ev": "progress",
                "phase": frame.phase,
                "done_bytes": frame.done_bytes,
                "total_bytes": frame.total_bytes,
            }
        case Ready():
            return {"ev": "ready", "info": _ready_info_wire(frame.info)}
        case Embedding():
            return {
                "ev": "embedding",
                "id": frame.id,
                "vectors": frame.vectors,
                "prompt_tokens": frame.prompt_tokens,
            }
        case Pong():
            return {"ev": "pong", "id": frame.id, "vram_used_mb": frame.vram_used_mb}
        case FaultReport():
            return {"ev": "fault", "kind": frame.kind, "detail": frame.detail}
    raise TypeError(f"not a frame: {frame!r}")


def encode(frame: Op | Event) -> bytes:
    payload = orjson.dumps(_wire(frame))
    return _LEN.pack(len(payload)) + payload


# ---- decoding -----------------------------------------------------------------------------------


def _str(d: Mapping[str, Any], key: str, default: str = "") -> str:
    v = d.get(key)
    return str(v) if v is not None else default


def _opt_int(d: Mapping[str, Any], key: str) -> int | None:
    v = d.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _ids(v: Any, field_name: str) -> list[int]:
    if not isinstance(v, list) or not v:
        raise RequestError("invalid_value", f"'{field_name}' must be a non-empty list of token ids")
    for t in v:
        if isinstance(t, bool) or not isinstance(t, int):
            raise RequestError(
                "invalid_value", f"'{field_name}' holds {t!r}, not a token id", field_name
            )
    return v


def _strings(v: Any, field_name: str) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return v
    raise RequestError(
        "invalid_value", f"'{field_name}' must be a string or a list of strings", field_name
    )


def _generate(d: Mapping[str, Any], rid: str) -> Generate:
    max_tokens = d.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0
    ):
        raise RequestError("invalid_value", "'max_tokens' must be an integer >= 0", "max_tokens")
    sampling = d.get("sampling")
    if sampling is not None and not isinstance(sampling, dict):
        raise RequestError("invalid_value", "'sampling' must be an object", "sampling")
    return Generate(
        rid,
        _ids(d.get("prompt_ids"), "prompt_ids"),
        max_tokens,
        sampling,
        _strings(d.get("stop"), "stop"),
        _strings(d.get("hold"), "hold"),
        bool(d.get("return_token_ids")),
        _constraint(d.get("constraint")),
    )


def _constraint(v: Any) -> Constraint | None:
    if v is None:
        return None
    grammar = v.get("grammar") if isinstance(v, dict) else None
    after = v.get("after") if isinstance(v, dict) else None
    if not isinstance(grammar, str) or not grammar or not (after is None or isinstance(after, str)):
        raise RequestError(
            "invalid_value",
            '\'constraint\' must be {"grammar": non-empty string, "after": string or null}',
            "constraint",
        )
    return Constraint(grammar, after or None)


def _embed(d: Mapping[str, Any], rid: str) -> Embed:
    inputs = d.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("invalid_value", "'inputs' must be a non-empty list", "inputs")
    return Embed(rid, [_ids(x, "inputs") for x in inputs])


class BadOp(Exception):
    """A daemon frame the worker can't act on; `error` is the answer when it had an id."""

    def __init__(self, error: Error | None, why: str) -> None:
        super().__init__(why)
        self.error = error


def decode_op(d: Mapping[str, Any]) -> Op:
    """A daemon frame, checked; raises BadOp (its `error` is what to answer, if anything), or
    LoadError for a `load` whose spec is refused."""
    op = d.get("op")
    if op == "shutdown":
        return Shutdown()
    if op == "load":
        spec = d.get("spec")
        return Load(LoadSpec.from_frame(spec if isinstance(spec, Mapping) else {}))
    rid = d.get("id")
    if not isinstance(rid, str):
        raise BadOp(None, f"a {op!r} frame without an id")
    try:
        if op == "generate":
            return _generate(d, rid)
        if op == "cancel":
            return Cancel(rid)
        if op == "embed":
            return _embed(d, rid)
        if op == "ping":
            return Ping(rid)
    except RequestError as e:
        raise BadOp(Error(rid, e.code, e.message, e.param), e.message) from None
    raise BadOp(Error(rid, "unknown_op", f"unknown op {op!r}"), f"unknown op {op!r}")


def _decode_delta(d: Mapping[str, Any]) -> Delta:
    return Delta(_str(d, "id"), _str(d, "text"), _opt_int(d, "tokens") or 0)


def _decode_done(d: Mapping[str, Any]) -> Done:
    ids = d.get("token_ids")
    return Done(
        _str(d, "id"),
        _str(d, "finish_reason", "stop"),
        d.get("stop_reason") if isinstance(d.get("stop_reason"), str) else None,
        _opt_int(d, "completion_tokens") or 0,
        ids if isinstance(ids, list) else None,
        _opt_int(d, "cached_tokens") or 0,
    )


def _decode_error(d: Mapping[str, Any]) -> Error:
    param = d.get("param")
    return Error(
        _str(d, "id"),
        _str(d, "code", "internal_error"),
        _str(d, "message"),
        param if isinstance(param, str) else None,
    )


def _decode_load_failed(d: Mapping[str, Any]) -> LoadFailed:
    extras = d.get("extras")
    return LoadFailed(
        _opt_int(d, "status") or 500,
        _str(d, "code", "load_failed"),
        _str(d, "message", "the worker could not load the model"),
        extras if isinstance(extras, dict) else {},
    )


def _ready_info_wire(info: ReadyInfo) -> dict[str, Any]:
    return {name: getattr(info, name) for name in ReadyInfo.__slots__}


def _decode_ready(d: Mapping[str, Any]) -> Ready:
    raw = d.get("info")
    i: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    load_secs = i.get("load_secs")
    return Ready(
        ReadyInfo(
            harness=_str(i, "harness", "torch"),
            devices=_int_list(i.get("devices")) or [0],
            vram_used_mb=_opt_int(i, "vram_used_mb"),
            quant=_opt_str(i, "quant"),
            dtype=_opt_str(i, "dtype"),
            max_position_embeddings=_opt_int(i, "max_position_embeddings"),
            capabilities=[c for c in i.get("capabilities") or [] if isinstance(c, str)] or ["text"],
            load_secs=float(load_secs) if isinstance(load_secs, (int, float)) else 0.0,
            embedding_dim=_opt_int(i, "embedding_dim"),
            vocab_size=_opt_int(i, "vocab_size"),
            eos_token_ids=_int_list(i.get("eos_token_ids")),
            model_type=_opt_str(i, "model_type"),
            static_cache=i.get("static_cache") is True,
            compiled=i.get("compiled") is True,
            max_batch=_opt_int(i, "max_batch"),
            batching_refused=_opt_str(i, "batching_refused"),
        )
    )


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    v = d.get(key)
    return v if isinstance(v, str) else None


def _int_list(v: Any) -> list[int]:
    if not isinstance(v, list):
        return []
    return [t for t in v if isinstance(t, int) and not isinstance(t, bool)]


def _decode_progress(d: Mapping[str, Any]) -> Progress:
    return Progress(_str(d, "phase", "load"), _opt_int(d, "done_bytes"), _opt_int(d, "total_bytes"))


def _decode_embedding(d: Mapping[str, Any]) -> Embedding:
    vectors = d.get("vectors")
    return Embedding(
        _str(d, "id"),
        vectors if isinstance(vectors, list) else [],
        _opt_int(d, "prompt_tokens") or 0,
    )


def _decode_pong(d: Mapping[str, Any]) -> Pong:
    return Pong(_str(d, "id"), _opt_int(d, "vram_used_mb"))


def _decode_fault(d: Mapping[str, Any]) -> FaultReport:
    return FaultReport(_str(d, "kind", "crash"), _str(d, "detail"))


_EVENTS: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    "delta": _decode_delta,
    "done": _decode_done,
    "error": _decode_error,
    "embedding": _decode_embedding,
    "pong": _decode_pong,
    "progress": _decode_progress,
    "ready": _decode_ready,
    "load_failed": _decode_load_failed,
    "fault": _decode_fault,
}


def decode_event(d: Mapping[str, Any]) -> Event | None:
    """A worker frame, or None for an event this daemon doesn't know (ignored)."""
    dec = _EVENTS.get(str(d.get("ev")))
    return dec(d) if dec is not None else None


def _object(payload: bytes) -> dict[str, Any]:
    obj = orjson.loads(payload)
    if not isinstance(obj, dict):
        raise ProtocolError("frame is not an object")
    return obj


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next frame's object, or None at a clean EOF between frames."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise ProtocolError("connection closed inside a frame header") from None
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise ProtocolError(f"frame of {n} bytes exceeds the limit")
    try:
        payload = await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection closed inside a frame") from None
    return _object(payload)


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The daemon's read: the next known worker event; None at a clean EOF."""
    while True:
        obj = await read_frame(reader)
        if obj is None:
            return None
        ev = decode_event(obj)
        if ev is not None:
            return ev


class FrameSocket:
    """The worker's blocking end: `send` is thread-safe, `recv` is for one reader thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self._buf = bytearray()

    @classmethod
    def from_fd(cls, fd: int) -> FrameSocket:
        return cls(socket.socket(fileno=fd))

    def send(self, frame: Op | Event) -> None:
        data = encode(frame)
        with self._send_lock:
            self.sock.sendall(data)

    def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                return False
            self._buf += chunk
        return True

    def recv(self) -> dict[str, Any] | None:
        """The next frame's object, or None when the peer closed the socket."""
        if not self._fill(4):
            if self._buf:
                raise ProtocolError("connection closed inside a frame header")
            return None
        (n,) = _LEN.unpack(self._buf[:4])
        if not self._fill(4 + n):
            raise ProtocolError("connection closed inside a frame")
        payload = bytes(self._buf[4 : 4 + n])
        del self._buf[: 4 + n]
        return _object(payload)

    def recv_op(self) -> Op | None:
        """The worker's read: the next daemon frame, checked (raises BadOp); None at EOF."""
        obj = self.recv()
        return None if obj is None else decode_op(obj)
