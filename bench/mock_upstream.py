"""A minimal, fast mock neuron / OpenAI upstream for the gateway benchmarks.

It is a raw ``asyncio.Protocol`` HTTP/1.1 server (keep-alive, Content-Length or chunked
request bodies) on uvloop, so it spends as little CPU as possible per request. It answers
enough of the neuron contract (see docs/reference.md#endpoints-neuron) for cortex to route to it:

- ``GET /health``, ``GET /discovery``, ``GET /models``, ``GET /version``, ``GET /v1/models``
- ``GET /models/{id}/endpoint`` (id may be ``%2F``-encoded) → ``{"url": <own base url>}``
- ``POST /models/load`` and ``POST /models/unload`` → 200
- ``POST /v1/chat/completions`` → a ~1 KB ``chat.completion`` with usage, or with
  ``"stream": true`` N ``chat.completion.chunk`` frames, a usage chunk (only with
  ``stream_options.include_usage``, like the neuron) and ``data: [DONE]``,
  as ``text/event-stream`` with one HTTP chunk per SSE frame. The request's ``model`` is echoed.

Run standalone: ``python bench/mock_upstream.py --port 0``; it prints ``LISTENING <port>`` on
stdout once bound. Node tokens are accepted and ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from typing import Any, cast

import orjson

MODEL_ID = "bench-model"
COMPLETION_BYTES = 1024
DEFAULT_SSE_CHUNKS = 50
_CREATED = int(time.time())
_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024


def _json_response(
    status: int, obj: Any, extra: tuple[tuple[str, str], ...] = (), *, close: bool = False
) -> bytes:
    """Serialise a complete HTTP/1.1 response with a JSON body."""
    body = orjson.dumps(obj)
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}.get(
        status, "OK"
    )
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        *(f"{k}: {v}" for k, v in extra),
    ]
    if close:
        head.append("connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _error(status: int, code: str, message: str) -> bytes:
    return _json_response(
        status,
        {"error": {"message": message, "type": "invalid_request_error", "code": code}},
    )


def completion_body(model: str, size: int = COMPLETION_BYTES) -> bytes:
    """A non-streaming chat.completion of about ``size`` bytes, echoing ``model``."""

    def build(content: str) -> bytes:
        return orjson.dumps(
            {
                "id": "chatcmpl-bench0001",
                "object": "chat.completion",
                "created": _CREATED,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "length",
                        "stop_reason": None,
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": 12,
                    "completion_tokens": 16,
                    "total_tokens": 28,
                    "completion_tokens_details": {"reasoning_tokens": 0},
                    "prompt_tokens_details": {"cached_tokens": 0},
                },
            }
        )

    base = build("")
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit " * 40
    return build(words[: max(0, size - len(base))])


def sse_frames(model: str, n: int = DEFAULT_SSE_CHUNKS, usage: bool = True) -> list[bytes]:
    """The SSE frames of a streamed chat completion: role, ``n - 2`` text, final, usage (when
    asked), DONE."""

    def chunk(choices: list[Any], **extra: Any) -> bytes:
        obj = {
            "id": "chatcmpl-bench0001",
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": model,
            "choices": choices,
            **extra,
        }
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    frames = [
        chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    ]
    text_chunks = max(0, n - 2)
    for i in range(text_chunks):
        delta = {"content": f"token{i} "}
        frames.append(chunk([{"index": 0, "delta": delta, "finish_reason": None}]))
    frames.append(
        chunk([{"index": 0, "delta": {}, "finish_reason": "length", "stop_reason": None}])
    )
    if usage:
        counts = {
            "prompt_tokens": 12,
            "completion_tokens": text_chunks,
            "total_tokens": 12 + text_chunks,
        }
        frames.append(chunk([], usage=counts))
    frames.append(b"data: [DONE]\n\n")
    return frames


class _Responses:
    """Pre-serialised replies, shared by every connection of one server."""

    def __init__(self, port: int, sse_chunks: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self.sse_chunks = sse_chunks
        devices_health = [
            {
                "index": 0,
                "kind": "cpu",
                "name": "cpu",
                "vram_total_mb": 32000,
                "vram_used_mb": 1000,
                "vram_free_mb": 31000,
                "utilization_pct": None,
                "temperature_c": None,
            }
        ]
        self.health = _json_response(
            200,
            {
                "status": "ok",
                "uptime_secs": 1,
                "devices": devices_health,
                "models": [{"id": MODEL_ID, "status": "loaded", "in_flight": 0, "queue_depth": 0}],
                "activation": {
                    "state": "ready",
                    "pending": [],
                    "in_progress": None,
                    "completed": [MODEL_ID],
                    "failed": [],
                },
            },
        )
        self.discovery = _json_response(
            200,
            {
                "hostname": "mock",
                "cpu_count": os.cpu_count() or 1,
                "devices": [
                    {
                        "index": 0,
                        "kind": "cpu",
                        "name": "cpu",
                        "vram_total_mb": 32000,
                        "compute_capability": None,
                    }
                ],
                "harnesses": ["torch"],
                "max_prompt_tokens": 16384,
                "max_output_tokens": 8192,
            },
        )
        self.models = _json_response(
            200,
            [
                {
                    "id": MODEL_ID,
                    "source": f"huggingface:{MODEL_ID}",
                    "harness": "torch",
                    "quant": "bf16",
                    "status": "loaded",
                    "devices": [0],
                    "vram_used_mb": 1000,
                    "capabilities": ["text"],
                    "tool_call": False,
                    "reasoning": False,
                    "loaded_at": _CREATED,
                }
            ],
        )
        self.version = _json_response(200, {"package_version": "0.0.0-mock", "git_sha": "mock"})
        self.v1_models = _json_response(
            200,
            {
                "object": "list",
                "data": [
                    {"id": MODEL_ID, "object": "model", "created": _CREATED, "owned_by": "helexa"}
                ],
            },
        )
        self.endpoint = _json_response(200, {"url": self.base_url})
        self.load = _json_response(
            200,
            {
                "status": "loaded",
                "model": MODEL_ID,
                "already_loaded": True,
                "vram_used_mb": 1000,
                "devices": [0],
            },
        )
        self.unload = _json_response(
            200, {"status": "unloaded", "model": MODEL_ID, "freed_mb": None}
        )
        self.not_found = _error(404, "unknown_route", "no such route on the mock")
        self._completion: dict[str, bytes] = {}
        self._stream: dict[tuple[str, bool], list[bytes]] = {}

    def completion(self, model: str) -> bytes:
        """Full HTTP response for a non-streaming completion of ``model`` (cached)."""
        resp = self._completion.get(model)
        if resp is None:
            body = completion_body(model)
            resp = (
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"x-helexa-prompt-tokens: 12\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            if len(self._completion) < 256:
                self._completion[model] = resp
        return resp

    def stream(self, model: str, usage: bool) -> list[bytes]:
        """Response head plus one chunk-encoded HTTP chunk per SSE frame, and the terminator."""
        parts = self._stream.get((model, usage))
        if parts is None:
            parts = [
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"cache-control: no-cache\r\nx-helexa-prompt-tokens: 12\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            ]
            for frame in sse_frames(model, self.sse_chunks, usage):
                parts.append(b"%x\r\n%s\r\n" % (len(frame), frame))
            parts.append(b"0\r\n\r\n")
            if len(self._stream) < 256:
                self._stream[(model, usage)] = parts
        return parts


class MockProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: parses requests in order and writes canned replies."""

    def __init__(self, responses: _Responses, sse_gap: float) -> None:
        self.r = responses
        self.sse_gap = sse_gap
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a paced stream is being written
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._process()

    def _process(self) -> None:
        """Handle every complete request in the buffer."""
        while not self.busy and not self.closed:
            req = self._parse()
            if req is None:
                return
            method, path, body, keep_alive = req
            self._dispatch(method, path, body, keep_alive)

    def _parse(self) -> tuple[str, str, bytes, bool] | None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                self._fail()
            return None
        lines = bytes(buf[:end]).split(b"\r\n")
        try:
            method_b, target_b, version = lines[0].split(b" ", 2)
        except ValueError:
            self._fail()
            return None
        clen = 0
        chunked = False
        keep_alive = version != b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                clen = int(value.strip())
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                v = value.strip().lower()
                if v == b"close":
                    keep_alive = False
                elif v == b"keep-alive":
                    keep_alive = True
        start = end + 4
        if chunked:
            decoded = _decode_chunked(buf, start)
            if decoded is None:
                return None
            body, consumed = decoded
            del buf[:consumed]
        else:
            if clen > _MAX_BODY:
                self._fail()
                return None
            if len(buf) - start < clen:
                return None
            body = bytes(buf[start : start + clen])
            del buf[: start + clen]
        path = target_b.decode("latin-1").split("?", 1)[0]
        return method_b.decode("latin-1"), path, body, keep_alive

    def _fail(self) -> None:
        if self.transport is not None:
            self.transport.write(_error(400, "bad_request", "malformed request"))
            self.transport.close()
        self.closed = True

    def _dispatch(self, method: str, path: str, body: bytes, keep_alive: bool) -> None:
        t = self.transport
        assert t is not None
        r = self.r
        if method == "POST" and path == "/v1/chat/completions":
            try:
                req = orjson.loads(body)
                model = str(req.get("model") or MODEL_ID)
                stream = bool(req.get("stream"))
                opts = req.get("stream_options")
                usage = isinstance(opts, dict) and opts.get("include_usage") is True
            except (orjson.JSONDecodeError, AttributeError):
                t.write(_error(400, "invalid_json", "request body is not valid JSON"))
                self._maybe_close(keep_alive)
                return
            if not stream:
                t.write(r.completion(model))
            elif self.sse_gap <= 0:
                for part in r.stream(model, usage):
                    t.write(part)
            else:
                self.busy = True
                t.pause_reading()
                asyncio.get_running_loop().create_task(
                    self._paced(r.stream(model, usage), keep_alive)
                )
                return
            self._maybe_close(keep_alive)
            return
        if method == "GET":
            if path == "/health":
                t.write(r.health)
            elif path == "/models":
                t.write(r.models)
            elif path == "/discovery":
                t.write(r.discovery)
            elif path.startswith("/models/") and path.endswith("/endpoint"):
                # Every id (literal or %2F-encoded) resolves to this server.
                t.write(r.endpoint)
            elif path == "/version":
                t.write(r.version)
            elif path == "/v1/models":
                t.write(r.v1_models)
            else:
                t.write(r.not_found)
        elif method == "POST" and path == "/models/load":
            t.write(r.load)
        elif method == "POST" and path == "/models/unload":
            t.write(r.unload)
        else:
            t.write(r.not_found)
        self._maybe_close(keep_alive)

    async def _paced(self, parts: list[bytes], keep_alive: bool) -> None:
        """Write a stream with ``sse_gap`` seconds between frames, then resume parsing."""
        t = self.transport
        assert t is not None
        try:
            for i, part in enumerate(parts):
                if self.closed:
                    return
                if 1 < i < len(parts) - 1:
                    await asyncio.sleep(self.sse_gap)
                t.write(part)
        finally:
            self.busy = False
        self._maybe_close(keep_alive)
        if not self.closed:
            t.resume_reading()
            self._process()

    def _maybe_close(self, keep_alive: bool) -> None:
        if not keep_alive and self.transport is not None:
            self.transport.close()
            self.closed = True


def _decode_chunked(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``start``; None while incomplete."""
    out = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip() or b"0", 16)
        pos = eol + 2
        if size == 0:
            # Skip (empty) trailers up to the final CRLF.
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return bytes(out), eol + 2
                pos = eol + 2
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
        pos += size + 2


async def serve(host: str, port: int, sse_chunks: int, sse_gap_ms: float) -> None:
    """Bind, print ``LISTENING <port>``, and serve until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    holder: dict[str, _Responses] = {}
    server = await loop.create_server(
        lambda: MockProtocol(holder["r"], sse_gap_ms / 1000.0),
        host,
        port,
        backlog=1024,
        reuse_address=True,
    )
    bound = server.sockets[0].getsockname()[1]
    holder["r"] = _Responses(bound, sse_chunks)
    print(f"LISTENING {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--sse-chunks", type=int, default=DEFAULT_SSE_CHUNKS)
    p.add_argument(
        "--sse-gap-ms", type=float, default=0.0, help="pause between SSE frames (0 = burst)"
    )
    args = p.parse_args(argv)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(args.host, args.port, args.sse_chunks, args.sse_gap_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
