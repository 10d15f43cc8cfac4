"""The inference routes: check the body (openai/), render and tokenize (in a thread), cap the
prompt, then drive the generation (drive.py) into the endpoint's sink."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from helexa.neuron.constrain.plan import constraint_for, xml_calls
from helexa.neuron.engine.frames import Generate
from helexa.neuron.errors import not_ready
from helexa.neuron.openai import chat as oc
from helexa.neuron.openai import common as oa
from helexa.neuron.openai import completions as ocm
from helexa.neuron.openai import embeddings as emb
from helexa.neuron.openai import responses as ra
from helexa.neuron.parse import MARKERS, OutputParser
from helexa.neuron.records import ModelRecord
from helexa.neuron.routes.drive import client_error, generate
from helexa.neuron.routes.plumbing import (
    MODEL_KEY,
    PROMPT_HEADER,
    PROMPT_KEY,
    prompt_too_large,
    read_json,
)
from helexa.neuron.routes.sinks import ChatSink, CompletionSink, ResponsesSink, Sink
from helexa.neuron.service import NEURON, Neuron
from helexa.neuron.worker_errors import (
    WorkerError,
)
from helexa.wire.http import json_response

log = logging.getLogger("helexa.neuron.routes.inference")


def _embedding_only(rec: ModelRecord) -> bool:
    caps = rec.info.capabilities
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
    request[MODEL_KEY] = model
    return neuron, neuron.registry.serving(model), model


def _hold(tok: Any, tools: bool) -> list[str]:
    """Markers the worker must never split across deltas (the parser watches them)."""
    if getattr(tok, "reasoning", False) or tools:
        return list(MARKERS)
    return []


async def _render_chat(
    neuron: Neuron, rec: ModelRecord, chat: oc.ChatRequest, model: str
) -> tuple[str, list[int]]:
    tok = rec.tokenizer
    if tok is None or not tok.has_chat_template:
        raise oa.no_chat_template(model)
    text, ids = await neuron.tokenize.run(
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
    text, ids = await _render_chat(neuron, rec, chat, model)
    request[PROMPT_KEY] = len(ids)
    limits = _limits(neuron, rec)
    oa.check_prompt(len(ids), limits)
    tok = rec.tokenizer
    oa.check_logit_bias(chat.sampling, tok)
    tools = chat.tools is not None
    reasoning = bool(getattr(tok, "reasoning", False))
    xml = tools and xml_calls(tok.template_source(chat.tools))
    constraint = None
    if chat.constrained:  # a client's schema may take a while to check: not on the loop
        constraint = await neuron.tokenize.run(constraint_for, chat, text, reasoning, xml)
    parser = OutputParser(
        reasoning=reasoning,
        start_in_reasoning=bool(tok.prompt_opens_think(text)),
        tools_enabled=tools,
        max_calls=chat.call_limit,
        stream_calls=bool(chat.grammar_tools()),
        schemas=chat.tool_schemas() if xml else None,
    )
    req = Generate(
        "",
        ids,
        oa.clamp_max_tokens(chat.max_tokens, len(ids), limits),
        chat.sampling.to_wire(),
        chat.stop,
        _hold(tok, tools),
        constraint=constraint,
    )
    return await generate(request, neuron, rec, req, len(ids), make_sink(parser), chat.stream)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, request.app[NEURON].max_prompt_bytes)
    neuron, rec, model = _lookup(request, body)
    chat = oc.parse_chat(body)
    return await _chat_like(
        request,
        neuron,
        rec,
        model,
        chat,
        lambda p: ChatSink(model, p, chat.include_usage, chat.constrained),
    )


async def responses(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, request.app[NEURON].max_prompt_bytes)
    neuron, rec, model = _lookup(request, body)
    req = ra.parse_responses(body)
    return await _chat_like(
        request, neuron, rec, model, req.chat, lambda p: ResponsesSink(model, p, req)
    )


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, request.app[NEURON].max_prompt_bytes)
    neuron, rec, model = _lookup(request, body)
    req = ocm.parse_completion(body)
    if _embedding_only(rec):
        raise oa.embedding_only(model)
    tok = rec.tokenizer
    oa.check_logit_bias(req.sampling, tok)
    ids = await neuron.tokenize.run(tok.encode, req.prompt)
    if not ids:
        raise oa.invalid_value("prompt", "must not be empty")
    request[PROMPT_KEY] = len(ids)
    limits = _limits(neuron, rec)
    oa.check_prompt(len(ids), limits)
    gen = Generate(
        "",
        ids,
        oa.clamp_max_tokens(req.max_tokens, len(ids), limits, default=ocm.DEFAULT_MAX_TOKENS),
        req.sampling.to_wire(),
        req.stop,
    )
    sink = CompletionSink(model, req.include_usage)
    return await generate(request, neuron, rec, gen, len(ids), sink, req.stream)


async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    neuron, rec, model = _lookup(request, body)
    req = emb.parse_embeddings(body)
    if req.tokenized:
        batches: list[list[int]] = req.inputs  # type: ignore[assignment]
    else:
        for text in req.inputs:  # a character is at least a byte: the prompt byte cap, cheaply
            if len(text) > neuron.max_prompt_bytes:
                raise prompt_too_large(len(text), neuron.max_prompt_bytes)
        batches = await neuron.tokenize.run(rec.tokenizer.encode_batch, req.inputs)
    prompt_len = sum(len(b) for b in batches)
    request[PROMPT_KEY] = prompt_len
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
            raise client_error(e, model) from None
    vectors = reply.vectors
    out = emb.embeddings_reply(model, vectors, prompt_len, req.encoding_format, req.dimensions)
    return json_response(out, headers={PROMPT_HEADER: str(prompt_len)})
