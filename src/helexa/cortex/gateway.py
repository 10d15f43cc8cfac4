"""The running gateway: every service cortex needs, built from settings and wired once."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import aiohttp

from helexa.config.cortex import Settings
from helexa.config.loader import ConfigError
from helexa.cortex.accounting import Accounting
from helexa.cortex.auth import LocalProvider
from helexa.cortex.fleet import Fleet
from helexa.cortex.idle import IdleReaper
from helexa.cortex.key_limits import KeyLimits
from helexa.cortex.ledger_store import LedgerStore
from helexa.cortex.lifecycle import Lifecycle
from helexa.cortex.metrics import CortexMetrics
from helexa.cortex.models_view import warn_dangling_aliases
from helexa.cortex.neuron_client import NeuronClient
from helexa.cortex.poller import Poller
from helexa.cortex.proxy import Proxy
from helexa.cortex.reload import CatalogueReloader
from helexa.cortex.router import Router
from helexa.cortex.upstream import UpstreamPool
from helexa.wire import http

log = logging.getLogger("helexa.cortex")


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        cfg = settings.config
        self.gateway_settings = cfg.gateway
        self.catalogue = settings.catalogue
        self.metrics = CortexMetrics()
        self.fleet = Fleet(cfg.neurons)
        self.ledger = self._open_ledger(settings)
        self.auth = LocalProvider.from_config(cfg.entitlements, self.ledger)
        self.require_auth = cfg.entitlements.require_auth
        self.max_body = int(self.gateway_settings.max_body_mb * 2**20)
        self.parser = http.BodyParser(self.gateway_settings.max_large_parses)
        self.key_limits = KeyLimits(self.gateway_settings.max_in_flight_per_key)
        self.accounting = Accounting(self.metrics, self.auth)
        self.reloader = CatalogueReloader(self.catalogue, settings.models_path)
        self.session: aiohttp.ClientSession | None = None
        self.draining = False

    @staticmethod
    def _open_ledger(settings: Settings) -> LedgerStore | None:
        """The ledger's file, when there are keys to meter and persistence is on."""
        path = settings.ledger_path
        if path is None or not settings.config.entitlements.keys:
            return None
        try:
            return LedgerStore(path)
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"cannot open the ledger at {path}: {e}") from None

    async def start(self, *, poll: bool = True) -> None:
        """Open the upstream pool and run one bounded poll round before serving."""
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
        )
        client = NeuronClient(self.session)
        cfg = self.settings.config
        self.poller = Poller(
            self.fleet, client, self.gateway_settings, self.metrics, self.reloader.check
        )
        self.lifecycle = Lifecycle(
            self.fleet, self.catalogue, cfg, client, self.poller, self.metrics
        )
        self.idle = IdleReaper(
            self.fleet, self.catalogue, self.lifecycle, self.metrics, cfg.eviction.idle_check_secs
        )
        self.router = Router(
            self.fleet, self.catalogue, self.lifecycle, client, self.gateway_settings
        )
        self.upstream = UpstreamPool(
            self.gateway_settings.probe_timeout_secs, self.gateway_settings.request_timeout_secs
        )
        self.proxy = Proxy(
            self.upstream,
            self.router,
            self.poller,
            self.metrics,
            self.gateway_settings,
            self.accounting,
        )
        for node in self.fleet:
            self.metrics.node_healthy(node.name).set(0)
        warn_dangling_aliases(self.catalogue)
        if poll:
            try:
                await asyncio.wait_for(
                    self.poller.poll_all(), self.gateway_settings.probe_timeout_secs + 1
                )
            except TimeoutError:
                log.warning("initial poll round did not finish in time; serving anyway")
            self.poller.start()
            self.idle.start()

    async def stop(self) -> None:
        if hasattr(self, "poller"):
            await self.poller.stop()
            await self.idle.stop()
        if hasattr(self, "upstream"):
            self.upstream.close()
        if self.session is not None:
            await self.session.close()
            self.session = None
        self.parser.close()
        if self.ledger is not None:
            await asyncio.to_thread(self.ledger.close)
            self.ledger = None
