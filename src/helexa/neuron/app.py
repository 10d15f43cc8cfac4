"""neuron's HTTP surface: the composition root that wires routes to the service.

The middleware (routes/plumbing.py) does what every request needs, so handlers only do their
own job; inference is in routes/inference.py and the generation it drives in routes/drive.py.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from helexa.neuron.routes.inference import chat_completions, completions, embeddings, responses
from helexa.neuron.routes.meta import discovery, health, metrics, version
from helexa.neuron.routes.models import (
    list_models,
    load_model,
    model_endpoint,
    unload_model,
    v1_models,
)
from helexa.neuron.routes.plumbing import on_prepare, pipeline
from helexa.neuron.routes.tokenize import tokenize
from helexa.neuron.service import NEURON, Neuron
from helexa.wire.listener import GuardedSite, runner_options

__all__ = ["Neuron", "make_app", "make_runner", "make_site"]


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
    app.on_response_prepare.append(on_prepare)
    return app


def make_runner(neuron: Neuron, **kwargs: Any) -> web.AppRunner:
    """The app's runner, with the request-head deadline (`header_timeout_secs`). Compressed
    bodies are not decoded (a bad or bombed one stalls aiohttp's decoder): `read_body` refuses
    them."""
    opts = runner_options(neuron.cfg.header_timeout_secs)
    app = make_app(neuron)
    return web.AppRunner(app, handler_cancellation=True, auto_decompress=False, **opts, **kwargs)


def make_site(neuron: Neuron, runner: web.AppRunner, host: str, port: int) -> GuardedSite:
    """The listener, with the connection cap and the write deadline."""
    cfg = neuron.cfg
    return GuardedSite(
        runner,
        host,
        port,
        max_connections=cfg.max_connections,
        write_timeout=cfg.write_timeout_secs,
    )
