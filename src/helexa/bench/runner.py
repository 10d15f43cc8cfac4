"""The version-aware sweep: per target, read its build and warm models, and fill
every incomplete (target, git_sha, model, scenario) cell up to `samples_per_version` runs.

A cell is complete with `samples_per_version` ok runs or as many failed ones, so a steady fleet
costs two GETs per target per sweep, and a broken model stops being retried until a new build
ships. Every run — failed ones included — is stored; store writes run in a worker thread so the
event loop keeps timing streams accurately.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp

from helexa.bench.scenarios import PromptBuilder, RunResult, Scenario, build_scenarios
from helexa.bench.store import RunRow, Store
from helexa.bench.targets import ModelEntry, Target, TargetError, TargetInfo, make_target
from helexa.config.bench import BenchConfig
from helexa.version import build_info

log = logging.getLogger("helexa.bench")


@dataclass
class SweepResult:
    """What one sweep did: runs stored, how many failed, and targets it could not reach."""

    ran: int = 0
    failed: int = 0
    unreachable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.unreachable


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


class Runner:
    """Runs sweeps of `config.targets` × warm models × scenarios into `store`."""

    def __init__(self, config: BenchConfig, store: Store, *, bench_sha: str | None = None) -> None:
        self.config = config
        self.store = store
        self.bench_sha = bench_sha or build_info().git_sha
        self.prompts = PromptBuilder()
        self.scenarios: list[Scenario] = build_scenarios(config.scenarios, self.prompts)

    async def loop(self, stop: asyncio.Event | None = None) -> None:
        """Sweep every `sweep_interval_secs` until `stop` is set (or the task is cancelled)."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                res = await self.sweep()
                log.info(
                    "sweep done: %d run(s), %d failed, %d target(s) unreachable",
                    res.ran,
                    res.failed,
                    len(res.unreachable),
                )
            except Exception:
                log.exception("sweep crashed; retrying after the interval")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.bench.sweep_interval_secs)

    async def sweep(self) -> SweepResult:
        """One pass over every target; see the module docstring."""
        result = SweepResult()
        timeout = self.config.bench.request_timeout_secs
        async with aiohttp.ClientSession() as session:
            for cfg in self.config.targets:
                target = make_target(cfg, session, timeout)
                try:
                    info = await target.probe()
                except TargetError as exc:
                    log.error("target %s skipped: %s", target.name, exc)
                    result.unreachable.append(target.name)
                    continue
                await self._sweep_target(target, info, result)
        return result

    async def _sweep_target(self, target: Target, info: TargetInfo, result: SweepResult) -> None:
        sha = info.build.git_sha
        if not info.models:
            log.info("target %s (%s): no loaded models", target.name, sha)
        for model in info.models:
            for scenario in self.scenarios:
                if scenario.applies_to(target):
                    await self._fill_cell(target, info, model, scenario, result)

    async def _fill_cell(
        self,
        target: Target,
        info: TargetInfo,
        model: ModelEntry,
        scenario: Scenario,
        result: SweepResult,
    ) -> None:
        need = self.config.bench.samples_per_version
        sha = info.build.git_sha
        ok, failed = await asyncio.to_thread(
            self.store.cell_counts, target.name, sha, model.id, scenario.id
        )
        while ok < need and failed < need:
            if result.ran:
                await asyncio.sleep(self.config.bench.iteration_pause_secs)
            ts = _now()
            try:
                run = await scenario.run(target, model.id)
            except Exception as exc:  # a scenario bug must cost one failed row, not the sweep
                log.exception("scenario %s crashed on %s/%s", scenario.id, target.name, model.id)
                run = RunResult.failed(scenario.max_tokens, f"{type(exc).__name__}: {exc}")
            await asyncio.to_thread(
                self.store.add_run, self._row(ts, target, info, model, scenario, run)
            )
            result.ran += 1
            if run.ok:
                ok += 1
            else:
                failed += 1
                result.failed += 1
            log.info(
                "%s %s %s @%s [%d/%d] %s ttft=%ss tps=%s total=%ss%s",
                target.name,
                model.id,
                scenario.id,
                sha,
                ok + failed,
                need,
                "ok" if run.ok else "FAILED",
                _fmt(run.ttft_s, 3),
                _fmt(run.decode_tps, 1),
                _fmt(run.total_s, 3),
                f" error={run.error}" if run.error else "",
            )

    def _row(
        self,
        ts: str,
        target: Target,
        info: TargetInfo,
        model: ModelEntry,
        scenario: Scenario,
        run: RunResult,
    ) -> RunRow:
        b = info.build
        return RunRow(
            ts=ts,
            host=target.name,
            hostname=info.hostname,
            gpu=info.gpu,
            git_sha=b.git_sha,
            git_sha_long=b.git_sha_long,
            git_dirty=b.git_dirty,
            build_timestamp=b.build_timestamp,
            package_version=b.package_version,
            build_info=info.build_json,
            bench_sha=self.bench_sha,
            model_id=model.id,
            harness=model.harness,
            quant=model.quant,
            scenario_id=scenario.id,
            prompt_size_approx=scenario.prompt_size_approx,
            prompt_tokens_actual=run.prompt_tokens_actual,
            max_tokens=run.max_tokens,
            ttft_s=run.ttft_s,
            decode_tps=run.decode_tps,
            total_s=run.total_s,
            completion_tokens=run.completion_tokens,
            ok=run.ok,
            error=run.error,
            extra=run.extra,
        )
