"""Model management routes: list, load, unload, the endpoint lookup, `/v1/models`."""

from __future__ import annotations

from urllib.parse import unquote

from aiohttp import web

from helexa.neuron import views
from helexa.neuron.errors import not_known
from helexa.neuron.openai import common as oa
from helexa.neuron.routes.plumbing import read_json
from helexa.neuron.service import NEURON
from helexa.wire.errors import ApiError
from helexa.wire.http import json_response


async def list_models(request: web.Request) -> web.Response:
    reg = request.app[NEURON].registry
    return json_response(views.list_models(reg.records, reg.limit))


async def v1_models(request: web.Request) -> web.Response:
    return json_response(views.openai_models(request.app[NEURON].registry.records))


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
