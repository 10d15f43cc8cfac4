"""The `Neuron` service object: everything one neuron process holds (config, devices,
workers, models, metrics) and the SIGTERM drain. Handlers reach it through `NEURON`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from helexa.config.neuron import NeuronConfig
from helexa.neuron import sources, weights
from helexa.neuron.discovery import DeviceProbe, NeuronDiscovery, worker_cuda_env
from helexa.neuron.metrics import NeuronMetrics
from helexa.neuron.models import Registry
from helexa.neuron.principals import PrincipalCap
from helexa.neuron.records import DeviceView
from helexa.neuron.sources import ResolvedSpec
from helexa.neuron.supervisor import (
    Supervisor,
)
from helexa.neuron.tokenize_gate import TokenizeGate
from helexa.neuron.tokenizer import ChatTokenizer, TokenizerCache
from helexa.wire.http import BodyParser
from helexa.wire.neuron import MAX_BYTES_PER_TOKEN

log = logging.getLogger("helexa.neuron.service")


class Neuron:
    """Everything one neuron process holds: config, devices, workers, models, metrics.

    The keyword arguments replace collaborators in tests (a fake worker command, a fake device
    probe, short restart backoffs)."""

    def __init__(
        self,
        cfg: NeuronConfig,
        *,
        probe: DeviceProbe | None = None,
        supervisor: Supervisor | None = None,
        resolve_source: Callable[[ResolvedSpec, Callable[[int | None, int | None], None]], Path]
        | None = None,
        tokenizer_for: Callable[[Path], Any] | None = None,
        estimate_mb: Callable[[Path, str], int | None] | None = None,
        restart_backoff: tuple[float, ...] | None = None,
        unload_grace: float | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = NeuronMetrics()
        self.probe = probe or DeviceProbe(cfg)
        self.discovery: NeuronDiscovery | None = None
        self.supervisor = supervisor or Supervisor()
        if self.supervisor.cuda_env is None:
            self.supervisor.cuda_env = self._cuda_env
        self.tokenizers = TokenizerCache(8)
        self.model_roots = cfg.model_roots()
        self.tokenize = TokenizeGate(cfg.max_tokenizations, cfg.tokenize_queue)
        self.principals = PrincipalCap(cfg.admission.max_per_principal)
        extra: dict[str, Any] = {}
        if restart_backoff is not None:
            extra["restart_backoff"] = restart_backoff
        if unload_grace is not None:
            extra["unload_grace"] = unload_grace
        adm = cfg.admission
        self.registry = Registry(
            self.supervisor,
            resolve_source=resolve_source or self._fetch,
            tokenizer_for=tokenizer_for or self._tokenizer,
            estimate_mb=estimate_mb if estimate_mb is not None else weights.estimate_weight_mb,
            devices=self.devices,
            metrics=self.metrics,
            sources=cfg.sources,
            default_source=cfg.default_source,
            harnesses=("torch",),
            max_prompt_tokens=cfg.max_prompt_tokens,
            max_output_tokens=cfg.max_output_tokens,
            admission_defaults=(adm.max_in_flight, adm.max_queue_depth, adm.max_wait_secs),
            load_deadline=(cfg.load_timeout_secs, cfg.load_stall_secs),
            worker_threads=cfg.worker_threads,
            **extra,
        )
        self.started = time.monotonic()
        self.max_body = int(cfg.max_body_mb * 1024 * 1024)
        # No prompt within max_prompt_tokens is this many bytes: checked before any parse or
        # tokenization, so a huge prompt costs nothing.
        self.max_prompt_bytes = cfg.max_prompt_tokens * MAX_BYTES_PER_TOKEN
        self.bodies = BodyParser(cfg.max_large_parses)
        self.token = (cfg.auth.token or "").encode() or None
        self.draining = False
        self.in_flight = 0
        self._idle: asyncio.Event | None = None

    # -- collaborators -----------------------------------------------------------------------------

    def _fetch(self, rs: ResolvedSpec, progress: Callable[[int | None, int | None], None]) -> Path:
        cfg = self.cfg
        return sources.fetch_model(
            rs.source,
            sources=cfg.sources,
            cache_dir=cfg.cache_dir,
            progress=progress,
            token_envs=cfg.source_token_env,
            roots=self.model_roots,
            gguf=rs.harness == "llamacpp",
            quant=rs.quant,
        )

    def _tokenizer(self, path: Path) -> ChatTokenizer:
        tok = ChatTokenizer(path)
        self.tokenizers.put(path, tok)
        return tok

    def _cuda_env(self, devices: list[int], kind: str) -> dict[str, str]:
        if self.discovery is None or kind == "cpu":
            return {"CUDA_VISIBLE_DEVICES": ""}
        return worker_cuda_env(self.discovery, devices)

    async def discover(self) -> NeuronDiscovery:
        disc = await asyncio.to_thread(self.probe.discover)
        self.discovery = disc
        self.registry.harnesses = tuple(disc.harnesses)  # empty without torch: loads get 400
        self.registry.device_count = max(1, len(disc.devices))
        return disc

    async def device_health(self) -> list[Any]:
        return await asyncio.to_thread(self.probe.health, self.registry.workers_rss_mb())

    async def devices(self) -> list[DeviceView]:
        """Device identities and free memory now, for device choice and the 507 pre-check."""
        if self.discovery is None:
            await self.discover()
        assert self.discovery is not None
        caps = {d.index: d.compute_capability for d in self.discovery.devices}
        return [
            DeviceView(
                index=h.index,
                kind=h.kind,
                total_mb=h.vram_total_mb,
                free_mb=h.vram_free_mb,
                compute_capability=caps.get(h.index),
            )
            for h in await self.device_health()
        ]

    async def start(self) -> None:
        await self.discover()

    async def close(self) -> None:
        await self.registry.close()
        self.probe.close()

    # -- the SIGTERM drain -----------------------------------------------------------------

    def _enter(self) -> None:
        self.in_flight += 1

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Refuse new requests, wait for those in flight; False if the grace ran out."""
        self.draining = True
        if self.in_flight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            log.warning("%d request(s) still running after %ss; stopping", self.in_flight, grace)
            return False
        return True


NEURON = web.AppKey("neuron", Neuron)
