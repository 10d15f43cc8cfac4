"""Run a neuron: listener first, then pre-warm, then the SIGTERM drain."""

from __future__ import annotations

import asyncio
import logging
import signal

from helexa.config.neuron import NeuronConfig
from helexa.neuron.app import Neuron, make_runner, make_site

log = logging.getLogger("helexa.neuron")

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def serve(
    cfg: NeuronConfig,
    stop: asyncio.Event | None = None,
    *,
    neuron: Neuron | None = None,
    started: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop`): then refuse new requests with 503, let those in
    flight finish for up to `shutdown_grace_secs`, stop every worker and return."""
    neuron = neuron or Neuron(cfg)
    await neuron.start()
    runner = make_runner(neuron, access_log=None, shutdown_timeout=1.0)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()
        host, port = split_listen(cfg.listen)
        site = make_site(neuron, runner, host, port)
        await site.start()
        disc = neuron.discovery
        log.info(
            "neuron listening on %s: %s, %d default model(s)",
            cfg.listen,
            ", ".join(f"{d.kind}:{d.index} {d.name}" for d in disc.devices) if disc else "?",
            len(cfg.default_models),
        )
        if cfg.auth.token is None and host not in LOOPBACK:
            log.warning(
                "no [auth] token (NEURON_TOKEN) is set and %s is not loopback: anyone who can "
                "reach this port can load models and run inference",
                cfg.listen,
            )
        neuron.registry.activate(cfg.default_models)
        if started is not None:
            started.set()
        await stop.wait()
        log.info(
            "draining: new requests get 503, %d in flight get up to %ss",
            neuron.in_flight,
            cfg.shutdown_grace_secs,
        )
        await neuron.drain(cfg.shutdown_grace_secs)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await neuron.close()
        await runner.cleanup()
        log.info("neuron stopped")
