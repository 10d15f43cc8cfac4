"""`/tokenize`: a token count with the model's tokenizer; never starts a worker."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from helexa.neuron import sources
from helexa.neuron.openai import chat as oc
from helexa.neuron.openai import common as oa
from helexa.neuron.routes.plumbing import printable, read_json
from helexa.neuron.service import NEURON, Neuron
from helexa.wire.errors import ApiError
from helexa.wire.http import json_response
from helexa.wire.modelid import parse_model_id

log = logging.getLogger("helexa.neuron.routes.tokenize")


async def tokenize(request: web.Request) -> web.Response:
    """A token count with the model's tokenizer; never starts a worker."""
    neuron = request.app[NEURON]
    body = await read_json(request, neuron.max_prompt_bytes)
    model = oa.require_model(body)
    tok = await _tokenizer_for_count(neuron, model, body.get("model_id"), body.get("quant"))
    if body.get("messages") is not None:
        messages = oc.check_messages(body.get("messages"), model, False)
        tools = oc.check_tools(body.get("tools"))
        if body.get("tool_choice") == "none":  # as chat renders it: without the tools
            tools = []
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise oa.invalid_value("chat_template_kwargs", "must be an object")
        _, ids = await neuron.tokenize.run(
            tok.encode_chat, messages, tools or None, chat_template_kwargs=kwargs, model_id=model
        )
    elif isinstance(body.get("prompt"), str):
        ids = await neuron.tokenize.run(tok.encode, body["prompt"])
    else:
        raise oa.invalid_value("messages", "or 'prompt' is required")
    return json_response({"model": model, "count": len(ids)})


async def _tokenizer_for_count(neuron: Neuron, model: str, load_id: Any, quant: Any) -> Any:
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
    cfg = neuron.cfg

    def load() -> Any:
        if mid.path is not None:
            sources.check_model_root(mid.path, neuron.model_roots, ident)
            root = Path(mid.path)
        else:
            root = sources.fetch_tokenizer(
                mid,
                sources=cfg.sources,
                cache_dir=cfg.cache_dir,
                token_envs=cfg.source_token_env,
                quant=quant if isinstance(quant, str) else None,  # a GGUF repo's file
            )
        return neuron.tokenizers.get(root)

    try:
        return await asyncio.to_thread(load)
    except ApiError as e:
        if e.status == 404:
            raise unresolvable from None
        raise
    except Exception as e:
        log.info("no tokenizer for %s: %s", printable(ident), printable(str(e)[:300]))
        raise unresolvable from None
