"""Shared fixtures: a real cortex on an ephemeral loopback port in front of fake neurons; and
the tier hooks (torch / gpu / slow markers, see rig/tiers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.typedefs import Middleware

from helexa.config.cortex import load_settings
from helexa.cortex.app import make_app, make_metrics_app
from helexa.cortex.gateway import Gateway
from helexa.cortex.serve import make_runner, make_site
from rig.cortex_rig import NODE_TOKEN, Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron
from rig.tiers import (
    pytest_collection_modifyitems as pytest_collection_modifyitems,
)
from rig.tiers import pytest_make_collect_report as pytest_make_collect_report
from rig.tiers import pytest_runtest_makereport as pytest_runtest_makereport
from rig.toml import write_toml


@pytest.fixture
async def start_cortex(tmp_path: Path) -> AsyncIterator[CortexFactory]:
    """`await start_cortex(neurons={"mock-node": fake}, models={...}, gateway={...}, ...)`.

    neurons maps names to FakeNeuron or URL strings; the first poll round runs unless
    `poll=False`; the background poller never runs unless `background_poll=True`.
    `middlewares` run before cortex's own on the API app (e.g. a request recorder).
    """
    runners: list[web.AppRunner] = []
    gateways: list[Gateway] = []

    async def factory(
        neurons: dict[str, FakeNeuron | str] | None = None,
        *,
        models: dict[str, Any] | None = None,
        gateway: dict[str, Any] | None = None,
        eviction: dict[str, Any] | None = None,
        entitlements: dict[str, Any] | None = None,
        token: str | None = NODE_TOKEN,
        poll: bool = True,
        background_poll: bool = False,
        middlewares: Sequence[Middleware] = (),
    ) -> Cortex:
        d = tmp_path / f"cortex{len(gateways)}"
        d.mkdir()
        nlist = []
        for name, n in (neurons or {}).items():
            entry: dict[str, Any] = {"name": name, "endpoint": n if isinstance(n, str) else n.url}
            if token:
                entry["token"] = token
            nlist.append(entry)
        cfg: dict[str, Any] = {
            "gateway": {
                "listen": "127.0.0.1:0",
                "metrics_listen": "127.0.0.1:0",
                "probe_timeout_secs": 2,
                **(gateway or {}),
            }
        }
        if eviction:
            cfg["eviction"] = eviction
        if entitlements:
            cfg["entitlements"] = entitlements
        if nlist:
            cfg["neurons"] = nlist
        write_toml(d / "cortex.toml", cfg)
        write_toml(d / "models.toml", models or {})
        settings = load_settings(d / "cortex.toml", explicit=True, environ={})
        gw = Gateway(settings)
        gateways.append(gw)
        await gw.start(poll=False)
        if poll:
            await gw.poller.poll_all()
        if background_poll:
            gw.poller.start()
        urls = []
        api = make_app(gw)
        for i, mw in enumerate(middlewares):
            api.middlewares.insert(i, mw)
        for app in (api, make_metrics_app(gw)):
            # cortex's own runner: the connection guards and body decoding as in production.
            runner = make_runner(
                app, gw.gateway_settings, handler_cancellation=True, shutdown_timeout=1
            )
            await runner.setup()
            site = make_site(runner, gw.gateway_settings, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            port = site.port
            urls.append(f"http://127.0.0.1:{port}")
        return Cortex(gw, urls[0], urls[1])

    yield factory
    for r in runners:
        await r.cleanup()
    for g in gateways:
        await g.stop()


@pytest.fixture
async def fake() -> AsyncIterator[FakeNeuron]:
    """The mock neuron (test-model loaded, 8000 MB) guarded by the node token."""
    async with FakeNeuron(token=NODE_TOKEN) as n:
        yield n


@pytest.fixture
async def cortex(start_cortex: CortexFactory, fake: FakeNeuron) -> Cortex:
    """The gateway rig: one neuron `mock-node`, empty catalogue, test-model loaded."""
    return await start_cortex({"mock-node": fake})
