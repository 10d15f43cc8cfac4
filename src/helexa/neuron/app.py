"""neuron's HTTP surface (contract §2.1): management, inference, metrics, on aiohttp.web.

One middleware does what every request needs (node auth, the shutdown gate, error envelopes,
the in-flight count the SIGTERM drain waits on), so handlers only do their own job. Inference
is: check the body (openai/), render and tokenize (in a thread), cap the prompt, pass
admission, then stream the worker's deltas through the OutputParser into reply frames. Nothing
is sent before the first token exists (§2.13), so a crash before it is a clean 503.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.metadata
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web

from helexa.config.neuron import NeuronConfig
from helexa.neuron import sources
from helexa.neuron.discovery import DeviceProbe, NeuronDiscovery, worker_cuda_env
from helexa.neuron.metrics import NeuronMetrics
from helexa.neuron.models import DeviceView, ModelRecord, Registry, not_known, not_ready
from helexa.neuron.openai import chat as oc
from helexa.neuron.openai import common as oa
from helexa.neuron.openai import completions as ocm
from helexa.neuron.openai import embeddings as emb
from helexa.neuron.openai import replies
from helexa.neuron.openai import responses as ra
from helexa.neuron.openai import responses_reply as rr
from helexa.neuron.parse import MARKERS, OutputParser
from helexa.neuron.supervisor import (
    RequestFailed,
    Supervisor,
    WorkerCrashed,
    WorkerError,
    WorkerStopped,
)
from helexa.neuron.tokenizer import ChatTokenizer, TokenizerCache
from helexa.version import build_info
from helexa.wire import sse
from helexa.wire.errors import ApiError
from helexa.wire.modelid import ModelId, parse_model_id

log = logging.getLogger("helexa.neuron.app")

JSON = "application/json"
PUBLIC = frozenset({"/health", "/version"})
INFERENCE = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
}
PROMPT_HEADER = "x-helexa-prompt-tokens"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_MODEL = web.RequestKey("model", str)
_PROMPT = web.RequestKey("prompt_tokens", int)


# -- errors of the HTTP layer (§2.2, §2.21) --------------------------------------------------------


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def too_large(max_body_mb: float) -> ApiError:
    return ApiError(
        413, "request_too_large", f"request body exceeds the {_num(max_body_mb)} MB limit"
    )


def invalid_json(detail: str) -> ApiError:
    return ApiError(400, "invalid_json", f"request body is not valid JSON: {detail}")


def not_an_object() -> ApiError:
    return ApiError(400, "invalid_json", "request body must be a JSON object")


def missing_token() -> ApiError:
    return ApiError(
        401, "invalid_node_token", "missing node token; supply 'Authorization: Bearer <token>'"
    )


def bad_token() -> ApiError:
    return ApiError(401, "invalid_node_token", "invalid node token")


def shutting_down() -> ApiError:
    return ApiError(503, "service_unavailable", "neuron is shutting down", retry_after=5)


def internal() -> ApiError:
    return ApiError(500, "internal_server_error", "internal server error")


def generation_failed(model: str) -> ApiError:
    return ApiError(500, "internal_server_error", f"generation failed for model '{model}'")


# -- the neuron ------------------------------------------------------------------------------------


class Neuron:
    """Everything one neuron process holds: config, devices, workers, models, metrics.

    The keyword arguments replace collaborators in tests (a fake worker command, a fake device
    probe, short restart backoffs)."""

    def __init__(
        self,
        cfg: NeuronConfig,
        *,
        probe: DeviceProbe | None = None,
        supervisor: Supervisor | None = None,
        resolve_source: Callable[[ModelId, Callable[[int | None, int | None], None]], Path]
        | None = None,
        tokenizer_for: Callable[[Path], Any] | None = None,
        estimate_mb: Callable[[Path, str], int | None] | None = None,
        restart_backoff: tuple[float, ...] | None = None,
        unload_grace: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = NeuronMetrics()
        self.probe = probe or DeviceProbe(cfg)
        self.discovery: NeuronDiscovery | None = None
        self.supervisor = supervisor or Supervisor()
        if self.supervisor.cuda_env is None:
            self.supervisor.cuda_env = self._cuda_env
        self.tokenizers = TokenizerCache(8)
        extra: dict[str, Any] = {}
        if restart_backoff is not None:
            extra["restart_backoff"] = restart_backoff
        if unload_grace is not None:
            extra["unload_grace"] = unload_grace
        adm = cfg.admission
        self.registry = Registry(
            self.supervisor,
            resolve_source=resolve_source or self._fetch,
            tokenizer_for=tokenizer_for or self._tokenizer,
            estimate_mb=estimate_mb if estimate_mb is not None else sources.estimate_weight_mb,
            devices=self.devices,
            metrics=self.metrics,
            sources=cfg.sources,
            default_source=cfg.default_source,
            harnesses=("torch",),
            max_prompt_tokens=cfg.max_prompt_tokens,
            max_output_tokens=cfg.max_output_tokens,
            admission_defaults=(adm.max_in_flight, adm.max_queue_depth, adm.max_wait_secs),
            **extra,
        )
        self.started = time.monotonic()
        self.max_body = int(cfg.max_body_mb * 1024 * 1024)
        self.token = (cfg.auth.token or "").encode() or None
        self.draining = False
        self.in_flight = 0
        self._idle: asyncio.Event | None = None

    # -- collaborators -----------------------------------------------------------------------------

    def _fetch(self, mid: ModelId, progress: Callable[[int | None, int | None], None]) -> Path:
        return sources.fetch_model(
            mid, sources=self.cfg.sources, cache_dir=self.cfg.cache_dir, progress=progress
        )

    def _tokenizer(self, path: Path) -> ChatTokenizer:
        tok = ChatTokenizer(path)
        self.tokenizers.put(path, tok)
        return tok

    def _cuda_env(self, devices: list[int], kind: str) -> dict[str, str]:
        if self.discovery is None or kind == "cpu":
            return {"CUDA_VISIBLE_DEVICES": ""}
        return worker_cuda_env(self.discovery, devices)

    async def discover(self) -> NeuronDiscovery:
        disc = await asyncio.to_thread(self.probe.discover)
        self.discovery = disc
        self.registry.harnesses = tuple(disc.harnesses)  # empty without torch: loads get 400
        self.registry.device_count = max(1, len(disc.devices))
        return disc

    async def device_health(self) -> list[Any]:
        return await asyncio.to_thread(self.probe.health, self.registry.workers_rss_mb())

    async def devices(self) -> list[DeviceView]:
        """Device identities and free memory now, for device choice and the 507 pre-check."""
        if self.discovery is None:
            await self.discover()
        assert self.discovery is not None
        caps = {d.index: d.compute_capability for d in self.discovery.devices}
        return [
            DeviceView(
                index=h.index,
                kind=h.kind,
                total_mb=h.vram_total_mb,
                free_mb=h.vram_free_mb,
                compute_capability=caps.get(h.index),
            )
            for h in await self.device_health()
        ]

    async def start(self) -> None:
        await self.discover()

    async def close(self) -> None:
        await self.registry.close()
        self.probe.close()

    # -- the SIGTERM drain (§2.12) -----------------------------------------------------------------

    def _enter(self) -> None:
        self.in_flight += 1

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Refuse new requests, wait for those in flight; False if the grace ran out."""
        self.draining = True
        if self.in_flight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            log.warning("%d request(s) still running after %ss; stopping", self.in_flight, grace)
            return False
        return True


NEURON = web.AppKey("neuron", Neuron)


def json_response(
    obj: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=JSON, headers=headers)


def error_response(err: ApiError, prompt_tokens: int | None = None) -> web.Response:
    headers = err.headers()
    if prompt_tokens is not None:
        headers[PROMPT_HEADER] = str(prompt_tokens)
    return web.Response(
        body=err.openai_body(), status=err.status, content_type=JSON, headers=headers
    )


# -- middleware ------------------------------------------------------------------------------------


@web.middleware
async def pipeline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth, the shutdown gate, the drain count, and every failure turned into an envelope."""
    neuron = request.app[NEURON]
    path = request.path
    endpoint = INFERENCE.get(path)
    status = 500
    counted = False
    try:
        if path not in PUBLIC:
            _authenticate(request, neuron)
            if neuron.draining:
                raise shutting_down()
            neuron._enter()
            counted = True
        resp = await handler(request)
        status = resp.status
        return resp
    except ApiError as e:
        status = e.status
        return error_response(e, request.get(_PROMPT))
    except web.HTTPException as e:
        status = e.status
        if e.status == 404:
            err = ApiError(404, "unknown_route", f"no route for {request.method} {path}")
        elif e.status == 405:
            err = ApiError(
                405, "method_not_allowed", f"method {request.method} is not allowed on {path}"
            )
        elif e.status == 413:
            err = too_large(neuron.cfg.max_body_mb)
        else:
            raise
        return error_response(err)
    except asyncio.CancelledError:
        status = 499  # the client went away (nginx's code); nothing is sent
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, path)
        status = 500
        return error_response(internal())
    finally:
        if counted:
            neuron._leave()
        if endpoint is not None:
            model = request.get(_MODEL)
            if model is not None:
                neuron.metrics.requests(model, endpoint, str(status)).inc()


def _authenticate(request: web.Request, neuron: Neuron) -> None:
    if neuron.token is None:
        return
    raw = request.headers.get("authorization", "")
    scheme, _, value = raw.strip().partition(" ")
    token = value.strip() if scheme.lower() == "bearer" else ""
    if not token:
        raise missing_token()
    if not hmac.compare_digest(token.encode(), neuron.token):
        raise bad_token()


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.headers.get("x-request-id")
    response.headers["x-request-id"] = rid if rid else "req_" + secrets.token_hex(12)


async def read_json(request: web.Request) -> dict[str, Any]:
    neuron = request.app[NEURON]
    clen = request.content_length
    if clen is not None and clen > neuron.max_body:
        raise too_large(neuron.cfg.max_body_mb)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(neuron.cfg.max_body_mb) from None
    except web.RequestPayloadError:
        raise invalid_json("the body could not be read") from None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise invalid_json(str(e)) from None
    if not isinstance(obj, dict):
        raise not_an_object()
    return obj


# -- management ------------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    neuron = request.app[NEURON]
    reg = neuron.registry
    devices = [d.model_dump() for d in await neuron.device_health()]
    disc = neuron.discovery
    degraded = reg.degraded() or (disc is not None and disc.cuda_unavailable_reason is not None)
    return json_response(
        {
            "status": "degraded" if degraded else "ok",
            "uptime_secs": int(time.monotonic() - neuron.started),
            "devices": devices,
            "models": reg.health_models(),
            "activation": reg.activation.as_api(),
        }
    )


def _features(disc: NeuronDiscovery | None) -> tuple[str, ...]:
    cuda = disc is not None and any(d.kind == "cuda" for d in disc.devices)
    return ("cuda", "cpu") if cuda else ("cpu",)


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


async def version(request: web.Request) -> web.Response:
    neuron = request.app[NEURON]
    info = build_info(_features(neuron.discovery))
    info.torch_version = _dist_version("torch")
    info.transformers_version = _dist_version("transformers")
    if neuron.discovery is not None:
        info.cuda_version = neuron.discovery.cuda_version
    return json_response(info.model_dump())


async def discovery(request: web.Request) -> web.Response:
    disc = await request.app[NEURON].discover()
    out = disc.model_dump()
    if out.get("cuda_unavailable_reason") is None:
        out.pop("cuda_unavailable_reason", None)
    return json_response(out)


async def list_models(request: web.Request) -> web.Response:
    return json_response(request.app[NEURON].registry.list_models())


async def v1_models(request: web.Request) -> web.Response:
    return json_response(request.app[NEURON].registry.openai_models())


async def load_model(request: web.Request) -> web.Response:
    body = await read_json(request)
    return json_response(await request.app[NEURON].registry.load(body))


async def unload_model(request: web.Request) -> web.Response:
    body = await read_json(request)
    model = body.get("model_id")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "missing_model_field", "missing 'model_id' field in request body")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise oa.invalid_value("force", "must be a boolean")
    return json_response(await request.app[NEURON].registry.unload(model, force))


async def model_endpoint(request: web.Request) -> web.Response:
    neuron = request.app[NEURON]
    model = unquote(request.match_info["id"])
    if model not in neuron.registry.records:
        raise not_known(model)
    return json_response({"url": neuron.cfg.bind_url})


async def metrics(request: web.Request) -> web.Response:
    neuron = request.app[NEURON]
    m = neuron.metrics
    m.set_model_gauges(neuron.registry.gauge_rows())
    for d in await neuron.device_health():
        if d.vram_used_mb is not None:
            m.device_used(str(d.index)).set(d.vram_used_mb)
        if d.vram_total_mb is not None:
            m.device_total(str(d.index)).set(d.vram_total_mb)
    return web.Response(
        body=m.exposition(),
        headers={"content-type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def tokenize(request: web.Request) -> web.Response:
    """§2.10: a token count with the model's tokenizer; never starts a worker."""
    neuron = request.app[NEURON]
    body = await read_json(request)
    model = oa.require_model(body)
    tok = await _tokenizer_for_count(neuron, model, body.get("model_id"))
    if body.get("messages") is not None:
        messages = oc.check_messages(body.get("messages"), model, False)
        tools = oc.check_tools(body.get("tools"))
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise oa.invalid_value("chat_template_kwargs", "must be an object")
        _, ids = await asyncio.to_thread(
            tok.encode_chat, messages, tools or None, chat_template_kwargs=kwargs, model_id=model
        )
    elif isinstance(body.get("prompt"), str):
        ids = await asyncio.to_thread(tok.encode, body["prompt"])
    else:
        raise oa.invalid_value("messages", "or 'prompt' is required")
    return json_response({"model": model, "count": len(ids)})


async def _tokenizer_for_count(neuron: Neuron, model: str, load_id: Any) -> Any:
    rec = neuron.registry.records.get(model)
    if rec is not None and rec.tokenizer is not None:
        return rec.tokenizer
    ident = load_id if isinstance(load_id, str) and load_id else model
    if rec is not None and not (isinstance(load_id, str) and load_id):
        ident = rec.source
    unresolvable = ApiError(
        404, "model_not_found", f"model '{model}' could not be resolved to a tokenizer"
    )
    try:
        mid = parse_model_id(ident, neuron.cfg.sources, neuron.cfg.default_source)
        mid = mid.with_default_scheme(neuron.cfg.default_source)
    except ApiError:
        raise unresolvable from None
    fetch = getattr(sources, "fetch_tokenizer", None)
    if mid.path is None and fetch is None:
        raise unresolvable
    cfg = neuron.cfg

    def load() -> Any:
        if mid.path is not None:
            root = Path(mid.path)
        else:
            assert fetch is not None
            root = fetch(mid, sources=cfg.sources, cache_dir=cfg.cache_dir)
        return neuron.tokenizers.get(root)

    try:
        return await asyncio.to_thread(load)
    except ApiError as e:
        if e.status == 404:
            raise unresolvable from None
        raise
    except Exception as e:
        log.info("no tokenizer for %s: %s", ident, str(e)[:300])
        raise unresolvable from None


# -- inference -------------------------------------------------------------------------------------


def _embedding_only(rec: ModelRecord) -> bool:
    caps = rec.info.get("capabilities") or ["text"]
    return "embedding" in caps and "text" not in caps


def _limits(neuron: Neuron, rec: ModelRecord) -> oa.Limits:
    """The advertised `limit` is a split a client can count on; a request still gets all the
    room its own prompt leaves, up to max_output_tokens."""
    context = neuron.registry.limit(rec)["context"]
    output = min(neuron.cfg.max_output_tokens, context)
    return oa.Limits(context, output, neuron.cfg.max_prompt_tokens)


def _lookup(request: web.Request, body: dict[str, Any]) -> tuple[Neuron, ModelRecord, str]:
    neuron = request.app[NEURON]
    model = oa.require_model(body)
    request[_MODEL] = model
    return neuron, neuron.registry.serving(model), model


class Sink:
    """How one endpoint turns generation into bytes (stream) or a body (non-stream)."""

    def __init__(self, model: str, parser: OutputParser | None) -> None:
        self.model = model
        self.parser = parser
        self.text: list[str] = []

    def start(self) -> bytes:
        return b""

    def delta(self, text: str, tokens: int) -> bytes:
        return b""

    def end(self, done: dict[str, Any], usage: replies.Usage) -> bytes:
        return b""

    def error(self, err: ApiError) -> bytes:
        return replies.error_frame(err)

    def body(self, done: dict[str, Any], usage: replies.Usage) -> dict[str, Any]:
        raise NotImplementedError

    def finish_parser(self, done: dict[str, Any]) -> list[Any]:
        assert self.parser is not None
        return self.parser.finish(hit_cap=done.get("finish_reason") == "length")


class ChatSink(Sink):
    def __init__(self, model: str, parser: OutputParser, include_usage: bool) -> None:
        super().__init__(model, parser)
        self.stream = oc.ChatStream(model, include_usage=include_usage)

    def start(self) -> bytes:
        return self.stream.first()

    def delta(self, text: str, tokens: int) -> bytes:
        assert self.parser is not None
        events = self.parser.feed(text, tokens)
        return self.stream.events(events) if events else b""

    def end(self, done: dict[str, Any], usage: replies.Usage) -> bytes:
        assert self.parser is not None
        tail = self.stream.events(self.finish_parser(done))
        return tail + self.stream.end(self.parser.finish_reason, done.get("stop_reason"), usage)

    def body(self, done: dict[str, Any], usage: replies.Usage) -> dict[str, Any]:
        assert self.parser is not None
        self.finish_parser(done)
        return oc.chat_completion(self.model, self.parser, usage, done.get("stop_reason"))


class CompletionSink(Sink):
    def __init__(self, model: str, include_usage: bool) -> None:
        super().__init__(model, None)
        self.stream = ocm.CompletionStream(model, include_usage=include_usage)

    def delta(self, text: str, tokens: int) -> bytes:
        if not text:
            return b""
        self.text.append(text)
        return self.stream.text(text)

    def end(self, done: dict[str, Any], usage: replies.Usage) -> bytes:
        return self.stream.end(str(done.get("finish_reason") or "stop"), usage)

    def body(self, done: dict[str, Any], usage: replies.Usage) -> dict[str, Any]:
        finish = str(done.get("finish_reason") or "stop")
        return ocm.completion(self.model, "".join(self.text), finish, usage)


class ResponsesSink(Sink):
    def __init__(self, model: str, parser: OutputParser, req: ra.ResponsesRequest) -> None:
        super().__init__(model, parser)
        self.req = req
        self.stream = rr.ResponsesStream(req)

    def start(self) -> bytes:
        return self.stream.start()

    def delta(self, text: str, tokens: int) -> bytes:
        assert self.parser is not None
        events = self.parser.feed(text, tokens)
        return self.stream.events(events) if events else b""

    def end(self, done: dict[str, Any], usage: replies.Usage) -> bytes:
        tail = self.stream.events(self.finish_parser(done))
        return tail + self.stream.finish(done.get("finish_reason") == "length", usage)

    def error(self, err: ApiError) -> bytes:
        return self.stream.error(err)

    def body(self, done: dict[str, Any], usage: replies.Usage) -> dict[str, Any]:
        assert self.parser is not None
        self.finish_parser(done)
        return rr.response_body(self.req, self.parser, usage)


_CLIENT_CODES = frozenset(
    {"invalid_value", "context_length_exceeded", "unsupported_model_capability"}
)


def _client_error(err: WorkerError, model: str) -> ApiError:
    """A worker failure as the client sees it. The engine's 400s are written for clients;
    anything else is logged and answered without the worker's text (§0.4)."""
    if isinstance(err, WorkerCrashed):
        return oa.worker_crashed(model)
    if isinstance(err, WorkerStopped):
        return oa.model_unloaded(model)
    if isinstance(err, RequestFailed):
        if err.code in _CLIENT_CODES:
            return ApiError(400, err.code, err.message, param=err.param)
        log.error("worker for %s failed a request: %s %s", model, err.code, err.message[:512])
    return generation_failed(model)


async def _generate(
    request: web.Request,
    neuron: Neuron,
    rec: ModelRecord,
    frame: dict[str, Any],
    prompt_len: int,
    sink: Sink,
    stream: bool,
) -> web.StreamResponse:
    """Admission, then the worker's deltas into `sink`: the shared tail of every text route."""
    model = rec.id
    adm = rec.admission
    await adm.acquire()
    try:
        handle = rec.handle
        if handle is None or not rec.serving:
            raise not_ready(model, "unloading" if rec.draining else rec.status)
        neuron.registry.touch(rec)
        m = neuron.metrics
        m.prompt_tokens(model).inc(prompt_len)
        started = time.monotonic()
        async with handle.generate(frame) as gen:
            events = gen.__aiter__()
            try:
                first = await events.__anext__()
            except WorkerError as e:
                raise _client_error(e, model) from None
            t_first = time.monotonic()
            m.ttft(model).observe(t_first - started)
            if not stream:
                return await _collect(neuron, rec, first, events, prompt_len, sink, t_first)
            resp = web.StreamResponse(headers={**sse.HEADERS, PROMPT_HEADER: str(prompt_len)})
            await resp.prepare(request)
            try:
                await _pump(neuron, rec, resp, first, events, prompt_len, sink, t_first)
            except ConnectionResetError:  # the client went away mid-stream: cancel, quietly
                log.debug("client of a %s stream went away", model)
            return resp
    finally:
        adm.release()


def _usage(sink: Sink, prompt_len: int, done: dict[str, Any]) -> replies.Usage:
    completion = int(done.get("completion_tokens") or 0)
    reasoning = sink.parser.reasoning_tokens if sink.parser is not None else 0
    return replies.Usage(prompt_len, completion, min(reasoning, completion))


def _observe_done(neuron: Neuron, model: str, done: dict[str, Any], t_first: float) -> None:
    n = int(done.get("completion_tokens") or 0)
    neuron.metrics.generated_tokens(model).inc(n)
    dt = time.monotonic() - t_first
    if n > 1 and dt > 0:
        neuron.metrics.tps(model).observe((n - 1) / dt)


async def _collect(
    neuron: Neuron,
    rec: ModelRecord,
    first: dict[str, Any],
    events: AsyncIterator[dict[str, Any]],
    prompt_len: int,
    sink: Sink,
    t_first: float,
) -> web.Response:
    ev = first
    try:
        while ev.get("ev") != "done":
            sink.delta(str(ev.get("text") or ""), int(ev.get("tokens") or 0))
            ev = await events.__anext__()
    except WorkerError as e:
        raise _client_error(e, rec.id) from None
    _observe_done(neuron, rec.id, ev, t_first)
    body = sink.body(ev, _usage(sink, prompt_len, ev))
    return json_response(body, headers={PROMPT_HEADER: str(prompt_len)})


async def _pump(
    neuron: Neuron,
    rec: ModelRecord,
    resp: web.StreamResponse,
    first: dict[str, Any],
    events: AsyncIterator[dict[str, Any]],
    prompt_len: int,
    sink: Sink,
    t_first: float,
) -> None:
    ev = first
    out = sink.start()
    try:
        while ev.get("ev") != "done":
            out += sink.delta(str(ev.get("text") or ""), int(ev.get("tokens") or 0))
            if out:
                await resp.write(out)
                out = b""
            ev = await events.__anext__()
    except WorkerError as e:
        await resp.write(out + sink.error(_client_error(e, rec.id)))
        return
    _observe_done(neuron, rec.id, ev, t_first)
    await resp.write(out + sink.end(ev, _usage(sink, prompt_len, ev)))


def _hold(tok: Any, tools: bool) -> list[str]:
    """Markers the worker must never split across deltas (the parser watches them)."""
    if getattr(tok, "reasoning", False) or tools:
        return list(MARKERS)
    return []


async def _render_chat(rec: ModelRecord, chat: oc.ChatRequest, model: str) -> tuple[str, list[int]]:
    tok = rec.tokenizer
    if tok is None or not tok.has_chat_template:
        raise oa.no_chat_template(model)
    text, ids = await asyncio.to_thread(
        tok.encode_chat,
        chat.messages,
        chat.tools,
        chat_template_kwargs=chat.chat_template_kwargs,
        model_id=model,
    )
    return text, ids


async def _chat_like(
    request: web.Request,
    neuron: Neuron,
    rec: ModelRecord,
    model: str,
    chat: oc.ChatRequest,
    make_sink: Callable[[OutputParser], Sink],
) -> web.StreamResponse:
    if _embedding_only(rec):
        raise oa.embedding_only(model)
    text, ids = await _render_chat(rec, chat, model)
    request[_PROMPT] = len(ids)
    limits = _limits(neuron, rec)
    oa.check_prompt(len(ids), limits)
    tok = rec.tokenizer
    tools = chat.tools is not None
    parser = OutputParser(
        reasoning=bool(getattr(tok, "reasoning", False)),
        start_in_reasoning=bool(tok.prompt_opens_think(text)),
        tools_enabled=tools,
        max_calls=chat.call_limit,
    )
    frame = {
        "prompt_ids": ids,
        "max_tokens": oa.clamp_max_tokens(chat.max_tokens, len(ids), limits),
        "sampling": chat.sampling.to_wire(),
        "stop": chat.stop,
        "hold": _hold(tok, tools),
    }
    return await _generate(request, neuron, rec, frame, len(ids), make_sink(parser), chat.stream)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    neuron, rec, model = _lookup(request, body)
    chat = oc.parse_chat(body)
    return await _chat_like(
        request, neuron, rec, model, chat, lambda p: ChatSink(model, p, chat.include_usage)
    )


async def responses(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    neuron, rec, model = _lookup(request, body)
    req = ra.parse_responses(body)
    return await _chat_like(
        request, neuron, rec, model, req.chat, lambda p: ResponsesSink(model, p, req)
    )


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    neuron, rec, model = _lookup(request, body)
    req = ocm.parse_completion(body)
    if _embedding_only(rec):
        raise oa.embedding_only(model)
    tok = rec.tokenizer
    ids = await asyncio.to_thread(tok.encode, req.prompt)
    if not ids:
        raise oa.invalid_value("prompt", "must not be empty")
    request[_PROMPT] = len(ids)
    limits = _limits(neuron, rec)
    oa.check_prompt(len(ids), limits)
    frame = {
        "prompt_ids": ids,
        "max_tokens": oa.clamp_max_tokens(
            req.max_tokens, len(ids), limits, default=ocm.DEFAULT_MAX_TOKENS
        ),
        "sampling": req.sampling.to_wire(),
        "stop": req.stop,
        "hold": [],
    }
    sink = CompletionSink(model, req.include_usage)
    return await _generate(request, neuron, rec, frame, len(ids), sink, req.stream)


async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    neuron, rec, model = _lookup(request, body)
    req = emb.parse_embeddings(body)
    if req.tokenized:
        batches: list[list[int]] = req.inputs  # type: ignore[assignment]
    else:
        batches = await asyncio.to_thread(rec.tokenizer.encode_batch, req.inputs)
    prompt_len = sum(len(b) for b in batches)
    request[_PROMPT] = prompt_len
    limit = neuron.cfg.max_prompt_tokens
    for b in batches:
        if len(b) > limit:
            raise oa.context_length_exceeded(len(b), limit)
        if not b:
            raise oa.invalid_value("input", "must not contain empty strings")
    async with rec.admission.slot():
        handle = rec.handle
        if handle is None or not rec.serving:
            raise not_ready(model, "unloading" if rec.draining else rec.status)
        neuron.registry.touch(rec)
        neuron.metrics.prompt_tokens(model).inc(prompt_len)
        try:
            reply = await handle.embed(batches)
        except WorkerError as e:
            raise _client_error(e, model) from None
    vectors = reply.get("vectors") or []
    out = emb.embeddings_reply(model, vectors, prompt_len, req.encoding_format, req.dimensions)
    return json_response(out, headers={PROMPT_HEADER: str(prompt_len)})


# -- the application -------------------------------------------------------------------------------


def make_app(neuron: Neuron) -> web.Application:
    app = web.Application(middlewares=[pipeline], client_max_size=neuron.max_body)
    app[NEURON] = neuron
    r = app.router
    r.add_get("/health", health)
    r.add_get("/version", version)
    r.add_get("/discovery", discovery)
    r.add_get("/models", list_models)
    r.add_post("/models/load", load_model)
    r.add_post("/models/unload", unload_model)
    r.add_get("/models/{id:.+}/endpoint", model_endpoint)
    r.add_post("/tokenize", tokenize)
    r.add_post("/v1/chat/completions", chat_completions)
    r.add_post("/v1/completions", completions)
    r.add_post("/v1/responses", responses)
    r.add_post("/v1/embeddings", embeddings)
    r.add_get("/v1/models", v1_models)
    r.add_get("/metrics", metrics)
    app.on_response_prepare.append(_on_prepare)
    return app
