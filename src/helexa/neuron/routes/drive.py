"""Driving one worker generation: admission, the first token, then the deltas into a sink.

Nothing is sent before the first token exists, so a crash before it is a clean 503;
after it, a failure is the sink's error frame."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from helexa.neuron.admission import Held
from helexa.neuron.engine.frames import Delta, Done, Generate
from helexa.neuron.errors import generation_failed, model_unloaded, not_ready, worker_crashed
from helexa.neuron.openai import replies
from helexa.neuron.records import ModelRecord
from helexa.neuron.routes.plumbing import PROMPT_HEADER
from helexa.neuron.routes.sinks import Sink
from helexa.neuron.service import Neuron
from helexa.neuron.worker_errors import (
    RequestFailed,
    WorkerCrashed,
    WorkerError,
    WorkerStopped,
)
from helexa.wire import sse
from helexa.wire.errors import ApiError
from helexa.wire.http import json_response

log = logging.getLogger("helexa.neuron.routes.drive")


_CLIENT_CODES = frozenset(
    {"invalid_value", "context_length_exceeded", "unsupported_model_capability"}
)


def client_error(err: WorkerError, model: str) -> ApiError:
    """A worker failure as the client sees it. The engine's 400s are written for clients;
    anything else is logged and answered without the worker's text."""
    if isinstance(err, WorkerCrashed):
        return worker_crashed(model)
    if isinstance(err, WorkerStopped):
        return model_unloaded(model)
    if isinstance(err, RequestFailed):
        if err.code in _CLIENT_CODES:
            return ApiError(400, err.code, err.message, param=err.param)
        log.error("worker for %s failed a request: %s %s", model, err.code, err.message[:512])
    return generation_failed(model)


async def generate(
    request: web.Request,
    neuron: Neuron,
    rec: ModelRecord,
    req: Generate,
    prompt_len: int,
    sink: Sink,
    stream: bool,
) -> web.StreamResponse:
    """Admission, then the worker's deltas into `sink`: the shared tail of every text route."""
    model = rec.id
    held = await rec.admission.hold()
    try:
        handle = rec.handle
        if handle is None or not rec.serving:
            raise not_ready(model, "unloading" if rec.draining else rec.status)
        neuron.registry.touch(rec)
        m = neuron.metrics
        m.prompt_tokens(model).inc(prompt_len)
        started = time.monotonic()
        async with handle.generate(req) as gen:
            events = gen.__aiter__()
            try:
                first = await events.__anext__()
            except WorkerError as e:
                raise client_error(e, model) from None
            t_first = time.monotonic()
            m.ttft(model).observe(t_first - started)
            if not stream:
                return await _collect(neuron, rec, first, events, prompt_len, sink, t_first)
            resp = web.StreamResponse(headers={**sse.HEADERS, PROMPT_HEADER: str(prompt_len)})
            await resp.prepare(request)
            try:
                await _pump(neuron, rec, resp, first, events, prompt_len, sink, t_first, held)
            except ConnectionResetError:  # the client went away mid-stream: cancel, quietly
                log.debug("client of a %s stream went away", model)
            return resp
    finally:
        held.free()


def _usage(sink: Sink, prompt_len: int, done: Done) -> replies.Usage:
    completion = done.completion_tokens
    reasoning = sink.parser.reasoning_tokens if sink.parser is not None else 0
    return replies.Usage(
        prompt_len, completion, min(reasoning, completion), min(done.cached_tokens, prompt_len)
    )


def _observe_done(neuron: Neuron, model: str, done: Done, t_first: float) -> None:
    n = done.completion_tokens
    neuron.metrics.generated_tokens(model).inc(n)
    dt = time.monotonic() - t_first
    if n > 1 and dt > 0:
        neuron.metrics.tps(model).observe((n - 1) / dt)


async def _collect(
    neuron: Neuron,
    rec: ModelRecord,
    first: Delta | Done,
    events: AsyncIterator[Delta | Done],
    prompt_len: int,
    sink: Sink,
    t_first: float,
) -> web.Response:
    ev = first
    try:
        while isinstance(ev, Delta):
            sink.delta(ev.text, ev.tokens)
            ev = await events.__anext__()
    except WorkerError as e:
        raise client_error(e, rec.id) from None
    _observe_done(neuron, rec.id, ev, t_first)
    body = sink.body(ev, _usage(sink, prompt_len, ev))
    return json_response(body, headers={PROMPT_HEADER: str(prompt_len)})


async def _pump(
    neuron: Neuron,
    rec: ModelRecord,
    resp: web.StreamResponse,
    first: Delta | Done,
    events: AsyncIterator[Delta | Done],
    prompt_len: int,
    sink: Sink,
    t_first: float,
    held: Held,
) -> None:
    ev = first
    out = sink.start()
    try:
        while isinstance(ev, Delta):
            out += sink.delta(ev.text, ev.tokens)
            if out:
                await resp.write(out)
                out = b""
            ev = await events.__anext__()
    except WorkerError as e:
        held.free()
        await resp.write(out + sink.error(client_error(e, rec.id)))
        return
    held.free()  # the worker is done: the tail's write no longer holds the model
    _observe_done(neuron, rec.id, ev, t_first)
    await resp.write(out + sink.end(ev, _usage(sink, prompt_len, ev)))
