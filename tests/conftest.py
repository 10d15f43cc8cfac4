"""Shared fixtures: a real cortex on an ephemeral loopback port in front of fake neurons."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from helexa.config.cortex import load_settings
from helexa.cortex.app import make_app, make_metrics_app
from helexa.cortex.gateway import Gateway
from rig.fake_neuron import FakeNeuron

NODE_TOKEN = "node-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def write_toml(path: Path, tables: dict[str, Any]) -> None:
    """A tiny TOML writer for test configs: scalars, [table]s and [[array]]s of tables."""
    lines: list[str] = []

    def emit(prefix: str, obj: dict[str, Any]) -> None:
        scalars = {k: v for k, v in obj.items() if not _is_table(v)}
        for k, v in scalars.items():
            lines.append(f'"{k}" = {toml_value(v)}' if "/" in k else f"{k} = {toml_value(v)}")
        for k, v in obj.items():
            if isinstance(v, dict) and _is_table(v):
                lines.append(f"\n[{prefix}{k}]")
                emit(f"{prefix}{k}.", v)
            elif isinstance(v, list) and _is_table(v):
                for item in v:
                    lines.append(f"\n[[{prefix}{k}]]")
                    emit(f"{prefix}{k}.", item)

    emit("", tables)
    path.write_text("\n".join(lines) + "\n")


def _is_table(v: Any) -> bool:
    if isinstance(v, dict):
        return True
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


@dataclass
class Cortex:
    """A running gateway: its Gateway object, its URLs, and metric helpers."""

    gw: Gateway
    url: str
    metrics_url: str

    @property
    def base(self) -> str:
        return self.url + "/v1"

    def metric(self, name: str, **labels: str) -> float:
        v = self.gw.metrics.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    async def poll(self) -> None:
        await self.gw.poller.poll_all()


CortexFactory = Callable[..., Awaitable[Cortex]]


@pytest.fixture
async def start_cortex(tmp_path: Path) -> AsyncIterator[CortexFactory]:
    """`await start_cortex(neurons={"mock-node": fake}, models={...}, gateway={...}, ...)`.

    neurons maps names to FakeNeuron or URL strings; the first poll round runs unless
    `poll=False`; the background poller never runs unless `background_poll=True`.
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
        for app in (make_app(gw), make_metrics_app(gw)):
            runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            urls.append(f"http://127.0.0.1:{port}")
        return Cortex(gw, urls[0], urls[1])

    yield factory
    for r in runners:
        await r.cleanup()
    for g in gateways:
        await g.stop()


@pytest.fixture
async def fake() -> AsyncIterator[FakeNeuron]:
    """The §5.0 mock neuron (test-model loaded, 8000 MB) guarded by the node token."""
    async with FakeNeuron(token=NODE_TOKEN) as n:
        yield n


@pytest.fixture
async def cortex(start_cortex: CortexFactory, fake: FakeNeuron) -> Cortex:
    """The §5.0 gateway rig: one neuron `mock-node`, empty catalogue, test-model loaded."""
    return await start_cortex({"mock-node": fake})
