"""Frames between the neuron daemon and a worker process (one per loaded model).

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
             "completion_tokens":int}
  error     {"ev":"error","id","code":str,"message":str}   this request failed, worker is fine
  embedding {"ev":"embedding","id","vectors":[[float]],"prompt_tokens":int}
  pong      {"ev":"pong","id","vram_used_mb":int|None}
  fault     {"ev":"fault","kind":"non_finite"|"cuda_error","detail":str}   then the worker exits

LoadSpec (the engine's side: helexa.neuron.engine.loader.LoadSpec; checked before torch loads):
  path               local model directory (hub ids are resolved by the daemon)   required
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
  compile            CUDA only: static cache of the whole context + torch.compile
                     (reduce-overhead) decode step, compiled at load, eager if that fails
  test_faults        honoured only with HELEXA_TEST_FAULTS=1 in the worker's env (FaultPlan):
                     non_finite_at_step, exit_at_step (SIGKILL), arm_file (one-shot),
                     load_delay_secs, step_delay_secs, script_text / script_ids (every
                     request emits these tokens, then EOS)

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
  compiled; capabilities is ["embedding"] for sentence-transformers dirs and encoders.
- Requests run round-robin, one token each per turn, each with its own cache; `ping` is answered
  by the reader thread even mid-generation. Exit codes: 0 on shutdown or socket close, 1 after
  load_failed or fault.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Any

import orjson

_LEN = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024


class ProtocolError(Exception):
    """The peer sent something that isn't a frame, or went away mid-frame."""


def encode(obj: dict[str, Any]) -> bytes:
    payload = orjson.dumps(obj)
    return _LEN.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next frame, or None at a clean EOF between frames."""
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
    obj = orjson.loads(payload)
    if not isinstance(obj, dict):
        raise ProtocolError("frame is not an object")
    return obj


class FrameSocket:
    """The worker's blocking end: `send` is thread-safe, `recv` is for one reader thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self._buf = bytearray()

    @classmethod
    def from_fd(cls, fd: int) -> FrameSocket:
        return cls(socket.socket(fileno=fd))

    def send(self, obj: dict[str, Any]) -> None:
        data = encode(obj)
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
        """The next frame, or None when the daemon closed the socket."""
        if not self._fill(4):
            if self._buf:
                raise ProtocolError("connection closed inside a frame header")
            return None
        (n,) = _LEN.unpack(self._buf[:4])
        if not self._fill(4 + n):
            raise ProtocolError("connection closed inside a frame")
        payload = bytes(self._buf[4 : 4 + n])
        del self._buf[: 4 + n]
        obj = orjson.loads(payload)
        if not isinstance(obj, dict):
            raise ProtocolError("frame is not an object")
        return obj
