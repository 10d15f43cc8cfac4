"""`helexa-bench`: sweep targets on a schedule, serve the results, or print a report."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from helexa import logs
from helexa.bench.store import Store, StoreError
from helexa.cli_common import install_uvloop, log_options, version_option
from helexa.config.bench import DEFAULT_PATH, BenchConfig, load_bench_config
from helexa.config.loader import ConfigError

log = logging.getLogger("helexa.bench")

PROG = "helexa-bench"

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="helexa-bench.toml to read (default: $HELEXA_BENCH_CONFIG, then "
    "/etc/helexa-bench/helexa-bench.toml). Env vars HELEXA_BENCH_SECTION__KEY override any key.",
)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=(
        "Examples:\n\n\b\n  helexa-bench run --config ./helexa-bench.toml\n"
        "  helexa-bench run --once          # one sweep, exit 1 if any run failed\n"
        "  helexa-bench serve               # JSON API only, on [api] listen\n"
        "  helexa-bench report --json"
    ),
)
@version_option(PROG)
def main() -> None:
    """helexa-bench: version-aware benchmarks for neurons and other OpenAI-compatible engines.

    Each sweep asks every target for its build and warm models, runs only the
    (target, build, model, scenario) cells that lack samples, and stores every run (failures
    included) in SQLite, served as a JSON API and summarised as a Markdown report.
    """


def _load(config_path: Path | None, *, need_tokens: bool = True) -> BenchConfig:
    explicit = config_path is not None or bool(os.environ.get("HELEXA_BENCH_CONFIG"))
    path = config_path or Path(os.environ.get("HELEXA_BENCH_CONFIG") or DEFAULT_PATH)
    try:
        return load_bench_config(path, explicit=explicit, need_tokens=need_tokens)
    except ConfigError as e:
        click.echo(f"{PROG}: config error: {e}", err=True)
        sys.exit(2)


def _open_store(path: str) -> Store:
    try:
        return Store(path)
    except (StoreError, OSError) as e:
        click.echo(f"{PROG}: cannot open store: {e}", err=True)
        sys.exit(2)


async def _until_signal(work: asyncio.Future[Any] | None = None) -> None:
    """Wait for SIGTERM/SIGINT (or `work` finishing, which re-raises its error)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        pending = {waiter} | ({work} if work is not None else set())
        done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        if work is not None and work in done:
            work.result()
    finally:
        waiter.cancel()
        if work is not None and not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


@main.command(
    epilog=(
        "Example:\n\n\b\n  helexa-bench run --config ./helexa-bench.toml --once\n"
        "  HELEXA_BENCH_BENCH__SAMPLES_PER_VERSION=3 helexa-bench run"
    )
)
@_config_option
@click.option("--once", is_flag=True, help="Run one sweep and exit: 0 if every run was ok, else 1.")
@log_options
def run(config_path: Path | None, once: bool, log_level: str, log_format: str) -> None:
    """Sweep every target every [bench] sweep_interval_secs (plus the API when [api] enabled).

    With --once: one sweep, then exit 0 if every run was ok, 1 if any run failed or a target
    could not be reached.

    Cells already holding [bench] samples_per_version runs for a target's current build are
    skipped, so on a steady fleet a sweep costs two GETs per target.
    """
    logs.setup(log_level, log_format)
    config = _load(config_path)
    if not config.targets:
        click.echo(f"{PROG}: config error: no [[targets]] configured", err=True)
        sys.exit(2)
    store = _open_store(config.bench.db_path)
    from helexa.bench.runner import Runner

    runner = Runner(config, store)
    if once:
        result = asyncio.run(runner.sweep())
        store.close()
        unreachable = list(result.unreachable)
        note = f", unreachable: {', '.join(unreachable)}" if unreachable else ""
        click.echo(
            f"{PROG}: sweep done: {result.ran} run(s), {result.failed} failed{note}", err=True
        )
        sys.exit(1 if result.failed or unreachable else 0)

    async def loop() -> None:
        api = None
        if config.api.enabled:
            from helexa.bench.api import start_api

            api = await start_api(store, config.api.listen)
        try:
            await _until_signal(asyncio.ensure_future(runner.loop()))
        finally:
            if api is not None:
                await api.cleanup()

    install_uvloop()
    try:
        asyncio.run(loop())
    except OSError as e:
        click.echo(f"{PROG}: cannot listen on {config.api.listen}: {e}", err=True)
        sys.exit(1)
    finally:
        store.close()


@main.command(epilog="Example:\n\n\b\n  helexa-bench serve --config ./helexa-bench.toml")
@_config_option
@log_options
def serve(config_path: Path | None, log_level: str, log_format: str) -> None:
    """Serve the read-only JSON API on [api] listen (no sweeps): /api/health, /api/dimensions,
    /api/summary, /api/series, /api/runs."""
    logs.setup(log_level, log_format)
    config = _load(config_path, need_tokens=False)
    store = _open_store(config.bench.db_path)
    from helexa.bench.api import start_api

    async def main_() -> None:
        api = await start_api(store, config.api.listen)
        try:
            await _until_signal()
        finally:
            await api.cleanup()

    install_uvloop()
    try:
        asyncio.run(main_())
    except OSError as e:
        click.echo(f"{PROG}: cannot listen on {config.api.listen}: {e}", err=True)
        sys.exit(1)
    finally:
        store.close()


@main.command(
    epilog="Example:\n\n\b\n  helexa-bench report > bench.md\n  helexa-bench report --json | jq ."
)
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary rows as JSON.")
def report(config_path: Path | None, as_json: bool) -> None:
    """Print the newest build's medians per (target, model, scenario) as a Markdown table, and
    a comparison table where several targets ran the same model and scenario."""
    config = _load(config_path, need_tokens=False)
    store = _open_store(config.bench.db_path)
    try:
        summary = store.summary()
    finally:
        store.close()
    if as_json:
        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return
    from helexa.bench.report import render_markdown

    baseline = next((t.name for t in config.targets if t.kind == "neuron"), None)
    click.echo(render_markdown(summary, baseline), nl=False)
