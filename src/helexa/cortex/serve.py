"""Run the gateway: API and metrics listeners, poller, graceful drain on SIGTERM, catalogue
reload on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

from aiohttp import web

from helexa.config.cortex import GatewaySettings, Settings
from helexa.cortex.app import make_app, make_metrics_app
from helexa.cortex.gateway import Gateway
from helexa.wire.listener import GuardedSite, runner_options

log = logging.getLogger("helexa.cortex")


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def make_runner(app: web.Application, cfg: GatewaySettings, **kwargs: Any) -> web.AppRunner:
    """A cortex app's runner: the request-head deadline, and compressed request bodies left
    undecoded (a bad or bombed one would stall aiohttp's decoder; read_body refuses them)."""
    opts = runner_options(cfg.header_timeout_secs)
    return web.AppRunner(app, access_log=None, auto_decompress=False, **opts, **kwargs)


def make_site(runner: web.AppRunner, cfg: GatewaySettings, host: str, port: int) -> GuardedSite:
    """The listener: the connection cap and the write deadline."""
    return GuardedSite(
        runner,
        host,
        port,
        max_connections=cfg.max_connections,
        write_timeout=cfg.write_timeout_secs,
    )


async def _site(runner: web.AppRunner, listen: str, cfg: GatewaySettings) -> GuardedSite:
    await runner.setup()
    host, port = split_listen(listen)
    site = make_site(runner, cfg, host, port)
    await site.start()
    return site


async def serve(
    settings: Settings,
    stop: asyncio.Event | None = None,
    *,
    bound: asyncio.Future[tuple[int, int]] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop`), then stop accepting and let in-flight
    requests finish for up to `shutdown_grace_secs`. `bound` gets the (API, metrics) ports."""
    gw = Gateway(settings)
    cfg = settings.config.gateway
    await gw.start()
    api = make_runner(
        make_app(gw), cfg, handler_cancellation=True, shutdown_timeout=cfg.shutdown_grace_secs
    )
    metrics = make_runner(make_metrics_app(gw), cfg)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gw.reloader.reload, "SIGHUP")
    try:
        api_site = await _site(api, cfg.listen, cfg)
        metrics_site = await _site(metrics, cfg.metrics_listen, cfg)
        if bound is not None:
            bound.set_result((api_site.port, metrics_site.port))
        log.info(
            "cortex listening on %s (metrics %s), %d neuron(s), %d catalogue model(s)",
            cfg.listen,
            cfg.metrics_listen,
            len(gw.fleet.nodes),
            len(gw.catalogue.models),
        )
        await stop.wait()
        log.info(
            "draining: no new connections, in-flight requests get %ss", cfg.shutdown_grace_secs
        )
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await api.cleanup()
        await metrics.cleanup()
        await gw.stop()
        log.info("cortex stopped")
