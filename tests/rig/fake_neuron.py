"""A scriptable fake neuron: a real aiohttp server speaking the neuron contract.

cortex tests need a node that answers over real sockets (so connection errors, stream drops and
cancellation behave as in production) yet is trivially steerable. Every piece of state is a plain
mutable attribute that tests change between calls; every request is recorded for assertions.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import copy
import secrets
import string
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiohttp import web
from multidict import CIMultiDict

JsonDict = dict[str, Any]
# (status, body) or (status, body, headers); body may be a dict/list (JSON), str or bytes.
Scripted = tuple[int, Any] | tuple[int, Any, dict[str, str] | None]
Fault = Literal["drop_after", "close_before_headers", "delay_headers"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MOCK_TEXT = "Hello from mock backend"
INFERENCE_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"}
)
PUBLIC_PATHS = frozenset({"/health", "/version"})
_ALNUM = string.ascii_letters + string.digits
# Per-request scratch set by the middleware; handlers run in the same task so they see it.
_REQ_JSON: contextvars.ContextVar[Any] = contextvars.ContextVar("fake_neuron_json", default=None)
_DROP_AFTER: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "fake_neuron_drop_after", default=None
)


def _rand_id(prefix: str, n: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(n))


def error_body(
    message: str, type_: str, code: str | None, param: str | None = None, **extras: Any
) -> JsonDict:
    """Build the OpenAI/neuron error envelope, extras inside `error`."""
    return {"error": {"message": message, "type": type_, "code": code, "param": param, **extras}}


def model_info(model_id: str, **overrides: Any) -> JsonDict:
    """A ModelInfo dict (loaded, 8000 MB on device 0); overrides win."""
    info: JsonDict = {
        "id": model_id,
        "harness": "torch",
        "status": "loaded",
        "devices": [0],
        "vram_used_mb": 8000,
        "capabilities": ["text"],
        "tool_call": False,
        "reasoning": False,
    }
    info.update(overrides)
    return info


# Script helpers for `stream_script`: each returns the `choices` part of one chat chunk.
def content_delta(text: str) -> JsonDict:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def reasoning_delta(text: str) -> JsonDict:
    return {"choices": [{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}]}


def tool_call_head(index: int, name: str, call_id: str | None = None) -> JsonDict:
    tc = {
        "index": index,
        "id": call_id or _rand_id("call_"),
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }
    return {"choices": [{"index": 0, "delta": {"tool_calls": [tc]}, "finish_reason": None}]}


def tool_call_args(index: int, arguments: str) -> JsonDict:
    tc = {"index": index, "function": {"arguments": arguments}}
    return {"choices": [{"index": 0, "delta": {"tool_calls": [tc]}, "finish_reason": None}]}


def finish_chunk(reason: str = "stop", stop_reason: str | None = None) -> JsonDict:
    return {
        "choices": [{"index": 0, "delta": {}, "finish_reason": reason, "stop_reason": stop_reason}]
    }


def default_devices() -> list[JsonDict]:
    return [
        {
            "index": 0,
            "kind": "cpu",
            "name": "cpu",
            "vram_total_mb": 32000,
            "vram_used_mb": 12000,
            "vram_free_mb": 20000,
            "utilization_pct": None,
            "temperature_c": None,
        }
    ]


def default_discovery() -> JsonDict:
    return {
        "hostname": "mock-node",
        "os": "Linux",
        "kernel": "6.0.0-mock",
        "cpu_count": 8,
        "memory_total_mb": 32000,
        "cuda_version": None,
        "driver_version": None,
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
    }


def default_activation() -> JsonDict:
    return {"state": "ready", "pending": [], "in_progress": None, "completed": [], "failed": []}


@dataclass(frozen=True)
class Recorded:
    """One request as the fake saw it; `path` is decoded, `raw_path` keeps %2F and the query."""

    method: str
    path: str
    raw_path: str
    headers: CIMultiDict[str]
    body: bytes
    json: Any


class FakeNeuron:
    """Mock neuron on 127.0.0.1:<ephemeral>; see the module docstring."""

    def __init__(
        self,
        *,
        models: list[JsonDict] | None = None,
        devices: list[JsonDict] | None = None,
        discovery: JsonDict | None = None,
        activation: JsonDict | None = None,
        token: str | None = None,
        health_models: list[JsonDict] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.host = host
        self._port = port
        self.models: list[JsonDict] = (
            copy.deepcopy(models) if models is not None else [model_info("test-model")]
        )
        self.devices: list[JsonDict] = (
            copy.deepcopy(devices) if devices is not None else default_devices()
        )
        self.discovery: JsonDict = (
            copy.deepcopy(discovery) if discovery is not None else default_discovery()
        )
        self.activation: JsonDict = (
            copy.deepcopy(activation) if activation is not None else default_activation()
        )
        self.token = token
        # None → derived from `models` (in_flight/queue_depth 0).
        self.health_models: list[JsonDict] | None = copy.deepcopy(health_models)
        self.health_status = "ok"
        self.version: JsonDict = {"package_version": "0.1.0", "git_sha": "fakesha"}
        self.endpoint_url: str | None = None  # None → this fake's own url

        # Inference scripting.
        self.usage: tuple[int, int] = (10, 5)
        self.chat_message: JsonDict = {"role": "assistant", "content": MOCK_TEXT}
        self.finish_reason: str = "stop"
        self.strict_models = False  # True → 404 model_not_found unless `model` is loaded here
        self.stream_chunks = 4
        self.stream_delay = 0.0
        self.stream_usage: tuple[int, int] | None = (10, 4)
        self.stream_finish_reason: str | None = None  # set → trailing {"delta":{}} finish chunk
        self.stream_script: list[JsonDict | str] | None = None
        # Set → called with each streaming chat body; a list it returns is that request's script
        # (None → `stream_script` or the default), so a test can answer by what was asked.
        self.stream_responder: Callable[[JsonDict], list[JsonDict | str] | None] | None = None
        self.stream_done = True
        # Set → called with (path, body) for each streaming chat or responses request; raw SSE
        # frames it returns are that reply as is (None → the usual scripting).
        self.sse_responder: Callable[[str, JsonDict], list[bytes] | None] | None = None
        self.responses_usage: tuple[int, int] = (5, 5)
        self.embedding_dim = 8
        self.embedding_tokens = 7
        self.tokenize_count = 42
        self.reply_override: dict[str, Scripted] = {}

        # Lifecycle scripting.
        self.load_delay = 0.0
        self.load_vram_mb = 4000
        self.load_response: Scripted | None = None
        self.load_responses: list[Scripted] = []
        self.unload_response: Scripted | None = None
        self.unload_responses: list[Scripted] = []

        # Faults.
        self.fault: Fault | None = None
        self.fault_after = 2
        self.fault_count: int | None = None  # None → every matching request; n → next n only
        self.fault_paths: set[str] = set(INFERENCE_PATHS)
        self.header_delay = 30.0

        # Observations.
        self.requests: list[Recorded] = []
        self.cancelled: list[str] = []
        self.cancel_event = asyncio.Event()
        self._arrived = asyncio.Event()  # pulsed on every request, for wait_for()

        self._runner: web.AppRunner | None = None
        self._started_at = time.monotonic()
        self._stopping = False
        self._loads: dict[str, asyncio.Future[tuple[int, Any, dict[str, str] | None]]] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen (again). After a stop() the same port is reused so a node 'comes back'."""
        if self._runner is not None:
            return
        self._stopping = False
        runner = web.AppRunner(
            self._build_app(), handler_cancellation=True, access_log=None, shutdown_timeout=0.05
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]
        self._started_at = time.monotonic()

    async def stop(self) -> None:
        """Close the listener and live connections; state and the port number are kept."""
        if self._runner is None:
            return
        self._stopping = True
        runner, self._runner = self._runner, None
        try:
            await runner.cleanup()
        finally:
            self._stopping = False

    async def refuse(self) -> None:
        """Stop listening so connects get ECONNREFUSED; `await start()` brings it back."""
        await self.stop()

    async def __aenter__(self) -> FakeNeuron:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- observation helpers ---------------------------------------------------------------

    def calls(self, path: str, method: str | None = None) -> list[Recorded]:
        return [
            r for r in self.requests if r.path == path and (method is None or r.method == method)
        ]

    def count(self, path: str, method: str | None = None) -> int:
        return len(self.calls(path, method))

    def last(self, path: str) -> Recorded:
        calls = self.calls(path)
        if not calls:
            raise AssertionError(f"fake neuron never saw {path}")
        return calls[-1]

    async def wait_for(self, path: str, n: int = 1, within: float = 5.0) -> list[Recorded]:
        """Wait until `path` was hit at least n times; tests of async side effects need it."""
        async with asyncio.timeout(within):
            while self.count(path) < n:
                await self._arrived.wait()
        return self.calls(path)

    def reset_observations(self) -> None:
        self.requests.clear()
        self.cancelled.clear()
        self.cancel_event = asyncio.Event()

    def model(self, model_id: str) -> JsonDict | None:
        return next((m for m in self.models if m.get("id") == model_id), None)

    # ---- app -------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.on_response_prepare.append(self._echo_request_id)
        r = app.router
        r.add_get("/health", self._health)
        r.add_get("/version", self._version)
        r.add_get("/discovery", self._discovery)
        r.add_get("/models", self._models)
        r.add_get("/v1/models", self._v1_models)
        r.add_get("/models/{id:.*}/endpoint", self._endpoint)
        r.add_post("/models/load", self._load)
        r.add_post("/models/unload", self._unload)
        r.add_post("/tokenize", self._tokenize)
        r.add_post("/v1/chat/completions", self._chat)
        r.add_post("/v1/completions", self._completions)
        r.add_post("/v1/responses", self._responses)
        r.add_post("/v1/embeddings", self._embeddings)
        return app

    @staticmethod
    async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
        rid = request.headers.get("x-request-id")
        if rid is not None and "x-request-id" not in response.headers:
            response.headers["x-request-id"] = rid

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        parsed: Any = None
        if body:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = None
        _REQ_JSON.set(parsed)
        _DROP_AFTER.set(None)
        self.requests.append(
            Recorded(
                request.method,
                request.path,
                request.raw_path,
                CIMultiDict(request.headers),
                body,
                parsed,
            )
        )
        self._arrived.set()
        self._arrived = asyncio.Event()

        if self.token is not None and request.path not in PUBLIC_PATHS:
            denied = self._check_token(request)
            if denied is not None:
                return denied

        path = request.path
        if path in self.reply_override:
            return _scripted(self.reply_override[path])

        fault = self._take_fault(path)
        try:
            if fault == "close_before_headers":
                assert request.transport is not None
                request.transport.close()
                return web.Response()  # nothing reaches the closed socket
            if fault == "delay_headers":
                await asyncio.sleep(self.header_delay)
            if fault == "drop_after":
                _DROP_AFTER.set(self.fault_after)
            return await handler(request)
        except asyncio.CancelledError:
            if not self._stopping:
                self._note_cancel(path)
            raise

    def _check_token(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "").strip()
        scheme, _, value = auth.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            msg = "missing node token; supply 'Authorization: Bearer <token>'"
        elif not secrets.compare_digest(value.strip(), self.token or ""):
            msg = "invalid node token"
        else:
            return None
        return _json(401, error_body(msg, "invalid_request_error", "invalid_node_token"))

    def _take_fault(self, path: str) -> Fault | None:
        if self.fault is None or path not in self.fault_paths:
            return None
        fault = self.fault
        if self.fault_count is not None:
            self.fault_count -= 1
            if self.fault_count <= 0:
                self.fault, self.fault_count = None, None
        return fault

    def _note_cancel(self, path: str) -> None:
        self.cancelled.append(path)
        self.cancel_event.set()

    # ---- control-plane handlers ------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        if self.health_models is not None:
            hm = self.health_models
        else:
            hm = [
                {
                    "id": m["id"],
                    "status": m.get("status", "loaded"),
                    "in_flight": 0,
                    "queue_depth": 0,
                }
                for m in self.models
            ]
        return _json(
            200,
            {
                "status": self.health_status,
                "uptime_secs": int(time.monotonic() - self._started_at),
                "devices": self.devices,
                "models": sorted(hm, key=lambda m: str(m.get("id"))),
                "activation": self.activation,
            },
        )

    async def _version(self, request: web.Request) -> web.Response:
        return _json(200, self.version)

    async def _discovery(self, request: web.Request) -> web.Response:
        return _json(200, self.discovery)

    async def _models(self, request: web.Request) -> web.Response:
        return _json(200, self.models)

    async def _v1_models(self, request: web.Request) -> web.Response:
        data = [
            {
                "id": m["id"],
                "object": "model",
                "created": m.get("loaded_at", 0),
                "owned_by": "helexa",
            }
            for m in self.models
            if m.get("status", "loaded") == "loaded"
        ]
        return _json(200, {"object": "list", "data": data})

    async def _endpoint(self, request: web.Request) -> web.Response:
        model_id = request.match_info["id"]
        if self.model(model_id) is None:
            return _not_known(model_id)
        return _json(200, {"url": self.endpoint_url or self.url})

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = _body(request)
        return _json(200, {"model": body.get("model"), "count": self.tokenize_count})

    async def _load(self, request: web.Request) -> web.Response:
        body = _body(request)
        model_id = body.get("model_id")
        if not isinstance(model_id, str) or not model_id:
            return _json(
                400, error_body("empty model id", "invalid_request_error", "invalid_model_id")
            )
        served = body.get("served_model_id") or model_id
        # Single-flight per served id, like the real neuron: joiners get the same reply.
        pending = self._loads.get(served)
        if pending is not None:
            return _scripted(await asyncio.shield(pending))
        fut: asyncio.Future[tuple[int, Any, dict[str, str] | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self._loads[served] = fut
        # A client disconnect must not cancel the load: run it detached.
        task = asyncio.ensure_future(self._do_load(served, model_id, body))
        task.add_done_callback(lambda t: self._finish_load(served, fut, t))
        return _scripted(await asyncio.shield(fut))

    def _finish_load(
        self,
        served: str,
        fut: asyncio.Future[tuple[int, Any, dict[str, str] | None]],
        task: asyncio.Task[tuple[int, Any, dict[str, str] | None]],
    ) -> None:
        self._loads.pop(served, None)
        if fut.done():
            return
        if task.cancelled():
            fut.cancel()
        elif (exc := task.exception()) is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(task.result())

    async def _do_load(
        self, served: str, model_id: str, spec: JsonDict
    ) -> tuple[int, Any, dict[str, str] | None]:
        existing = self.model(served)
        if existing is not None and existing.get("status") == "loaded":
            return (
                200,
                {
                    "status": "loaded",
                    "model": served,
                    "already_loaded": True,
                    "vram_used_mb": existing.get("vram_used_mb"),
                    "devices": existing.get("devices", [0]),
                },
                None,
            )
        previous = copy.deepcopy(existing)
        entry: JsonDict = existing if existing is not None else {"id": served}
        if existing is None:
            self.models.append(entry)
        entry.update(status="loading", vram_used_mb=None)
        t0 = time.monotonic()
        if self.load_delay:
            await asyncio.sleep(self.load_delay)

        scripted: Scripted | None = None
        if self.load_responses:
            scripted = self.load_responses.pop(0)
        elif self.load_response is not None:
            scripted = self.load_response
        if scripted is not None and scripted[0] != 200:
            # Failed load: the model keeps its previous record, or none (simplified).
            if previous is None:
                self.models.remove(entry)
            else:
                entry.clear()
                entry.update(previous)
            return _unpack(scripted)

        devices = spec.get("devices") or (previous or {}).get("devices") or [0]
        vram = self.load_vram_mb
        entry.update(
            model_info(
                served,
                source=model_id,
                quant=spec.get("quant") or "fp32",
                devices=list(devices),
                vram_used_mb=vram,
                loaded_at=int(time.time()),
                restarts=0,
            )
        )
        self._adjust_memory(devices, vram)
        if scripted is not None:
            return _unpack(scripted)
        return (
            200,
            {
                "status": "loaded",
                "model": served,
                "already_loaded": False,
                "load_secs": round(time.monotonic() - t0, 3),
                "vram_used_mb": vram,
                "devices": list(devices),
            },
            None,
        )

    async def _unload(self, request: web.Request) -> web.Response:
        body = _body(request)
        model_id = str(body.get("model_id", ""))
        scripted: Scripted | None = None
        if self.unload_responses:
            scripted = self.unload_responses.pop(0)
        elif self.unload_response is not None:
            scripted = self.unload_response
        if scripted is not None and scripted[0] != 200:
            return _scripted(scripted)
        entry = self.model(model_id)
        if entry is None:
            return _not_known(model_id)
        freed = entry.get("vram_used_mb") if entry.get("status") == "loaded" else None
        if freed:
            self._adjust_memory(entry.get("devices") or [0], -int(freed))
        entry.update(status="unloaded", vram_used_mb=None)
        if scripted is not None:
            return _scripted(scripted)
        return _json(200, {"status": "unloaded", "model": model_id, "freed_mb": freed})

    def _adjust_memory(self, devices: list[int], delta_mb: int) -> None:
        """Keep /health memory consistent with loads: charge everything to the first device."""
        idx = devices[0] if devices else 0
        dev = next((d for d in self.devices if d.get("index") == idx), None)
        if dev is None and self.devices:
            dev = self.devices[0]
        if dev is None:
            return
        total = int(dev.get("vram_total_mb") or 0)
        used = max(0, int(dev.get("vram_used_mb") or 0) + delta_mb)
        dev["vram_used_mb"] = used
        dev["vram_free_mb"] = max(0, int(dev.get("vram_free_mb") or 0) - delta_mb)
        if total:
            dev["vram_free_mb"] = min(dev["vram_free_mb"], max(0, total - used))

    # ---- inference handlers ----------------------------------------------------------------

    def _inference_preamble(self, request: web.Request) -> tuple[JsonDict, web.Response | None]:
        if not isinstance(_REQ_JSON.get(), dict):
            msg = "request body is not a JSON object"
            return {}, _json(400, error_body(msg, "invalid_request_error", "invalid_json"))
        body = _body(request)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return body, _json(
                400,
                error_body(
                    "'model' is required", "invalid_request_error", "missing_model_field", "model"
                ),
            )
        if self.strict_models:
            m = self.model(model)
            if m is None or m.get("status", "loaded") != "loaded":
                return body, _json(
                    404,
                    error_body(
                        f"model '{model}' is not loaded on this neuron",
                        "invalid_request_error",
                        "model_not_found",
                    ),
                )
        return body, None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, err = self._inference_preamble(request)
        if err is not None:
            return err
        model = body["model"]
        cid = _rand_id("chatcmpl-")
        created = int(time.time())
        if not body.get("stream"):
            p, c = self.usage
            return await self._send_json(
                request,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": copy.deepcopy(self.chat_message),
                            "finish_reason": self.finish_reason,
                            "stop_reason": None,
                            "logprobs": None,
                        }
                    ],
                    "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
                },
                prompt_tokens=p,
            )

        if (raw := await self._raw_sse(request, body)) is not None:
            return raw

        def chunk(part: JsonDict) -> JsonDict:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                **part,
            }

        script: list[JsonDict | str]
        answer = self.stream_responder(body) if self.stream_responder is not None else None
        if answer is not None:
            script = list(answer)
        elif self.stream_script is not None:
            script = list(self.stream_script)
        else:
            script = [content_delta(f"token{i}") for i in range(self.stream_chunks)]
            if self.stream_finish_reason is not None:
                script.append(finish_chunk(self.stream_finish_reason))
        frames = [_data(item if isinstance(item, str) else chunk(item)) for item in script]
        prompt = self.usage[0]
        if self.stream_usage is not None:
            prompt, comp = self.stream_usage
            if _wants_usage(body):
                usage = {
                    "prompt_tokens": prompt,
                    "completion_tokens": comp,
                    "total_tokens": prompt + comp,
                }
                frames.append(_data(chunk({"choices": [], "usage": usage})))
        if self.stream_done:
            frames.append(b"data: [DONE]\n\n")
        return await self._send_sse(request, frames, prompt_tokens=prompt, paced=len(script))

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, err = self._inference_preamble(request)
        if err is not None:
            return err
        model = body["model"]
        cid = _rand_id("cmpl-")
        created = int(time.time())

        def obj(choices: list[JsonDict], **extra: Any) -> JsonDict:
            return {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }

        if not body.get("stream"):
            p, c = self.usage
            usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
            choice = {
                "index": 0,
                "text": MOCK_TEXT,
                "logprobs": None,
                "finish_reason": self.finish_reason,
            }
            return await self._send_json(request, obj([choice], usage=usage), prompt_tokens=p)
        frames = [
            _data(obj([{"index": 0, "text": f"token{i}", "logprobs": None, "finish_reason": None}]))
            for i in range(self.stream_chunks)
        ]
        prompt = self.usage[0]
        if self.stream_usage is not None:
            prompt, comp = self.stream_usage
            if _wants_usage(body):
                usage = {
                    "prompt_tokens": prompt,
                    "completion_tokens": comp,
                    "total_tokens": prompt + comp,
                }
                frames.append(_data(obj([], usage=usage)))
        if self.stream_done:
            frames.append(b"data: [DONE]\n\n")
        return await self._send_sse(request, frames, prompt_tokens=prompt, paced=self.stream_chunks)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body, err = self._inference_preamble(request)
        if err is not None:
            return err
        model = body["model"]
        inp, out = self.responses_usage
        usage = {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}

        def response(status: str, text: str | None) -> JsonDict:
            output: list[JsonDict] = []
            if text is not None:
                output.append(_resp_message(text, "completed"))
            return {
                "id": "resp-test-001",
                "object": "response",
                "created_at": 1700000000,
                "status": status,
                "model": model,
                "output": output,
                **({"usage": usage} if status == "completed" else {}),
            }

        if not body.get("stream"):
            return await self._send_json(
                request, response("completed", MOCK_TEXT), prompt_tokens=inp
            )
        if (raw := await self._raw_sse(request, body)) is not None:
            return raw

        deltas = [f"token{i}" for i in range(self.stream_chunks)]
        text = "".join(deltas)
        item_id = "msg-test-001"
        part = {"type": "output_text", "text": "", "annotations": []}
        done_part = {**part, "text": text}
        events: list[tuple[str, JsonDict]] = [
            ("response.created", {"response": response("in_progress", None)}),
            ("response.in_progress", {"response": response("in_progress", None)}),
            (
                "response.output_item.added",
                {"output_index": 0, "item": _resp_message("", "in_progress")},
            ),
            (
                "response.content_part.added",
                {"item_id": item_id, "output_index": 0, "content_index": 0, "part": part},
            ),
        ]
        events += [
            (
                "response.output_text.delta",
                {"item_id": item_id, "output_index": 0, "content_index": 0, "delta": d},
            )
            for d in deltas
        ]
        events += [
            (
                "response.output_text.done",
                {"item_id": item_id, "output_index": 0, "content_index": 0, "text": text},
            ),
            (
                "response.content_part.done",
                {"item_id": item_id, "output_index": 0, "content_index": 0, "part": done_part},
            ),
            (
                "response.output_item.done",
                {"output_index": 0, "item": _resp_message(text, "completed")},
            ),
            ("response.completed", {"response": response("completed", text)}),
        ]
        frames = [
            f"event: {name}\n".encode() + _data({"type": name, "sequence_number": seq, **payload})
            for seq, (name, payload) in enumerate(events)
        ]
        return await self._send_sse(request, frames, prompt_tokens=inp, paced=len(frames))

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, err = self._inference_preamble(request)
        if err is not None:
            return err
        inputs = body.get("input")
        if isinstance(inputs, list) and inputs and not all(isinstance(x, int) for x in inputs):
            n = len(inputs)
        else:
            n = 1
        b64 = body.get("encoding_format") == "base64"
        data = []
        for i in range(n):
            vec = [
                round((i + 1) * 0.01 + j / self.embedding_dim, 6) for j in range(self.embedding_dim)
            ]
            emb: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        t = self.embedding_tokens
        payload = {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": t, "total_tokens": t},
        }
        return await self._send_json(request, payload, prompt_tokens=t)

    async def _raw_sse(self, request: web.Request, body: JsonDict) -> web.StreamResponse | None:
        frames = self.sse_responder(request.path, body) if self.sse_responder else None
        if frames is None:
            return None
        return await self._send_sse(request, frames, prompt_tokens=self.usage[0], paced=len(frames))

    # ---- senders ---------------------------------------------------------------------------

    async def _send_json(
        self, request: web.Request, payload: JsonDict, *, prompt_tokens: int
    ) -> web.StreamResponse:
        raw = orjson.dumps(payload)
        headers = {"x-helexa-prompt-tokens": str(prompt_tokens)}
        drop_after = _DROP_AFTER.get()
        if drop_after is None:
            return web.Response(
                body=raw, status=200, content_type="application/json", headers=headers
            )
        # drop_after on a non-stream reply: headers and half the body, then the socket dies.
        resp = web.StreamResponse(
            status=200, headers={**headers, "content-type": "application/json"}
        )
        resp.content_length = len(raw)
        await resp.prepare(request)
        await resp.write(raw[: len(raw) // 2])
        return self._drop(request, resp)

    async def _send_sse(
        self, request: web.Request, frames: list[bytes], *, prompt_tokens: int, paced: int
    ) -> web.StreamResponse:
        """Write frames; the first `paced` frames are each preceded by `stream_delay`."""
        resp = web.StreamResponse(
            status=200,
            headers={
                "content-type": "text/event-stream",
                "cache-control": "no-cache",
                "x-helexa-prompt-tokens": str(prompt_tokens),
            },
        )
        await resp.prepare(request)
        drop_after: int | None = _DROP_AFTER.get()
        try:
            for i, frame in enumerate(frames):
                if drop_after is not None and i >= drop_after:
                    return self._drop(request, resp)
                if i < paced and self.stream_delay:
                    await asyncio.sleep(self.stream_delay)
                await resp.write(frame)
            await resp.write_eof()
        except ConnectionResetError:
            # The client went away between frames and the write noticed before cancellation did.
            if not self._stopping:
                self._note_cancel(request.path)
        return resp

    @staticmethod
    def _drop(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
        """Kill the socket mid-body: no terminating chunk, no [DONE]."""
        if request.transport is not None:
            request.transport.close()
        return resp


# ---- module helpers -------------------------------------------------------------------------


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type="application/json", headers=headers
    )


def _unpack(s: Scripted) -> tuple[int, Any, dict[str, str] | None]:
    return (s[0], s[1], s[2] if len(s) > 2 else None)


def _scripted(s: Scripted) -> web.Response:
    status, body, headers = _unpack(s)
    if isinstance(body, bytes | str):
        raw = body.encode() if isinstance(body, str) else body
        hdrs = {"content-type": "application/json", **(headers or {})}
        return web.Response(body=raw, status=status, headers=hdrs)
    return _json(status, body, headers)


def _not_known(model_id: str) -> web.Response:
    msg = f"model '{model_id}' is not known to this neuron"
    return _json(404, error_body(msg, "invalid_request_error", "model_not_found"))


def _data(obj: Any) -> bytes:
    payload = obj.encode() if isinstance(obj, str) else orjson.dumps(obj)
    return b"data: " + payload + b"\n\n"


def _resp_message(text: str, status: str) -> JsonDict:
    content = (
        [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    )
    return {
        "type": "message",
        "id": "msg-test-001",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def _wants_usage(body: JsonDict) -> bool:
    """Like the neuron (and OpenAI): the usage chunk only with `stream_options.include_usage`."""
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


def _body(request: web.Request) -> JsonDict:
    """The parsed JSON body recorded by the middleware ({} when absent or not an object)."""
    body = _REQ_JSON.get()
    return body if isinstance(body, dict) else {}
