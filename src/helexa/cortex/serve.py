"""Run the gateway: API and metrics listeners, poller, graceful drain on SIGTERM, catalogue
reload on SIGHUP."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from helexa.config.cortex import Settings
from helexa.cortex.app import make_app, make_metrics_app
from helexa.cortex.gateway import Gateway

log = logging.getLogger("helexa.cortex")


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def _site(runner: web.AppRunner, listen: str) -> web.TCPSite:
    await runner.setup()
    host, port = split_listen(listen)
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    return site


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop`), then stop accepting and let in-flight
    requests finish for up to `shutdown_grace_secs`."""
    gw = Gateway(settings)
    cfg = settings.config.gateway
    await gw.start()
    api = web.AppRunner(
        make_app(gw),
        handler_cancellation=True,
        shutdown_timeout=cfg.shutdown_grace_secs,
        access_log=None,
    )
    metrics = web.AppRunner(make_metrics_app(gw), access_log=None)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gw.reloader.reload, "SIGHUP")
    try:
        await _site(api, cfg.listen)
        await _site(metrics, cfg.metrics_listen)
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
