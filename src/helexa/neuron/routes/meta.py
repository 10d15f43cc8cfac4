"""The node's own routes: `/health`, `/version`, `/discovery`, `/metrics`."""

from __future__ import annotations

import importlib.metadata
import time

from aiohttp import web

from helexa.neuron import views
from helexa.neuron.discovery import NeuronDiscovery
from helexa.neuron.service import NEURON
from helexa.version import build_info
from helexa.wire import http
from helexa.wire.http import json_response


async def health(request: web.Request) -> web.Response:
    neuron = request.app[NEURON]
    reg = neuron.registry
    devices = [d.model_dump() for d in await neuron.device_health()]
    disc = neuron.discovery
    degraded = views.degraded(reg.records) or (
        disc is not None and disc.cuda_unavailable_reason is not None
    )
    return json_response(
        {
            "status": "degraded" if degraded else "ok",
            "uptime_secs": int(time.monotonic() - neuron.started),
            "devices": devices,
            "models": views.health_models(reg.records),
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


async def metrics(request: web.Request) -> web.Response:
    neuron = request.app[NEURON]
    m = neuron.metrics
    m.set_model_gauges(views.gauge_rows(neuron.registry.records))
    for d in await neuron.device_health():
        if d.vram_used_mb is not None:
            m.device_used(str(d.index)).set(d.vram_used_mb)
        if d.vram_total_mb is not None:
            m.device_total(str(d.index)).set(d.vram_total_mb)
    return http.metrics_response(m.exposition())
