"""Frames between the neuron daemon and a worker process (one per loaded model), typed.

Every frame is a class in `frames.py`; `encode` and the `decode_*` functions here are the only
code that reads or writes frame dicts. Every frame, field and default is described in
docs/worker-protocol.md; keep it in step with this module.
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
