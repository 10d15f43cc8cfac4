"""`cortex`: run the gateway, or ask a running one what the fleet looks like."""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console
from rich.table import Table

from helexa import logs
from helexa.cli_common import install_uvloop, log_options, version_option
from helexa.config.cortex import DEFAULT_PATH, load_settings
from helexa.config.loader import ConfigError

DEFAULT_ENDPOINT = "http://localhost:31313"


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=(
        "Example:\n\n\b\n  cortex serve --config /etc/cortex/cortex.toml\n"
        "  cortex status --endpoint http://gateway:31313"
    ),
)
@version_option("cortex")
def main() -> None:
    """cortex: one OpenAI- and Anthropic-compatible API over a fleet of neuron GPU hosts.

    It routes each request to the host where the model is loaded (or loads it from the
    catalogue, evicting idle models when memory is tight), meters API keys, and exports
    Prometheus metrics on a separate listener.
    """


@main.command(
    epilog=(
        "Example:\n\n\b\n  cortex serve --config ./cortex.toml --log-level debug\n"
        "  CORTEX_GATEWAY__LISTEN=127.0.0.1:8080 cortex serve"
    )
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="cortex.toml to read (default: $CORTEX_CONFIG, then /etc/cortex/cortex.toml). "
    "Env vars CORTEX_SECTION__KEY override any key.",
)
@log_options
def serve(config_path: Path | None, log_level: str, log_format: str) -> None:
    """Run the gateway: API listener, metrics listener and the neuron poller.

    SIGTERM or Ctrl-C stops accepting connections and lets in-flight requests (streams
    included) finish for up to [gateway] shutdown_grace_secs before exiting 0. SIGHUP (and
    any change to the file) re-reads models.toml; an invalid file keeps the old catalogue.
    """
    logs.setup(log_level, log_format)
    explicit = config_path is not None or bool(os.environ.get("CORTEX_CONFIG"))
    path = config_path or Path(os.environ.get("CORTEX_CONFIG") or DEFAULT_PATH)
    try:
        settings = load_settings(path, explicit=explicit)
    except ConfigError as e:
        click.echo(f"cortex: config error: {e}", err=True)
        sys.exit(2)
    from helexa.cortex.serve import serve as run

    install_uvloop()
    try:
        asyncio.run(run(settings))
    except ConfigError as e:  # found while starting: the ledger file can't be opened
        click.echo(f"cortex: config error: {e}", err=True)
        sys.exit(2)
    except OSError as e:
        click.echo(f"cortex: cannot listen: {e}", err=True)
        sys.exit(1)


def _get(endpoint: str, path: str, api_key: str | None) -> Any:
    req = urllib.request.Request(endpoint.rstrip("/") + path)
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return orjson.loads(resp.read())


def _fetch(endpoint: str, api_key: str | None, paths: list[str]) -> list[Any]:
    try:
        return [_get(endpoint, p, api_key) for p in paths]
    except urllib.error.HTTPError as e:
        detail = e.read()[:300].decode(errors="replace")
        click.echo(f"cortex: {endpoint} answered HTTP {e.code}: {detail}", err=True)
    except (urllib.error.URLError, OSError, ValueError) as e:
        click.echo(f"cortex: cannot reach {endpoint}: {e}", err=True)
    sys.exit(1)


def _client_options(f: Any) -> Any:
    f = click.option("--json", "as_json", is_flag=True, help="Print raw JSON instead of tables.")(f)
    f = click.option(
        "--api-key", envvar="HELEXA_API_KEY", help="API key (default: $HELEXA_API_KEY)."
    )(f)
    f = click.option(
        "--endpoint",
        default=DEFAULT_ENDPOINT,
        show_default=True,
        help="Base URL of a running cortex.",
    )(f)
    return f


def _fleet(endpoint: str, api_key: str | None) -> Any:
    """/api/fleet adds nodes and devices; a gateway that refuses it still gets a status."""
    try:
        return _get(endpoint, "/api/fleet", api_key)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _nodes_table(fleet: dict[str, Any]) -> Table:
    table = Table("node", "healthy", "endpoint", "devices (used/total MB)", "models")
    for n in fleet.get("nodes", []):
        devices = ", ".join(
            f"{d.get('index')}:{d.get('name') or d.get('kind')} "
            f"{d.get('vram_used_mb', '?')}/{d.get('vram_total_mb', '?')}"
            for d in n.get("devices", [])
        )
        models = ", ".join(f"{m['id']}:{m['status']}" for m in n.get("models", []))
        table.add_row(
            n.get("name", "?"),
            "yes" if n.get("healthy") else "no",
            n.get("endpoint", ""),
            devices or "-",
            models or "-",
        )
    return table


def _locations(m: dict[str, Any]) -> str:
    return ", ".join(f"{loc['node']}:{loc['status']}" for loc in m.get("locations", [])) or "-"


@main.command(
    epilog="Example:\n\n\b\n  cortex status --endpoint http://gateway:31313 --api-key sk-..."
)
@_client_options
def status(endpoint: str, api_key: str | None, as_json: bool) -> None:
    """Show fleet health and every model with where it is loaded and where it could be."""
    health, models = _fetch(endpoint, api_key, ["/health", "/v1/models"])
    fleet = _fleet(endpoint, api_key)
    if as_json:
        out = {"health": health, "models": models}
        if fleet is not None:
            out["fleet"] = fleet
        click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2))
        return
    console = Console()
    nodes = health.get("nodes", {})
    console.print(
        f"[bold]{health.get('status')}[/bold]: {nodes.get('healthy', 0)}/{nodes.get('total', 0)} "
        "nodes healthy"
    )
    if fleet is not None:
        console.print(_nodes_table(fleet))
    table = Table("model", "loaded", "locations", "feasible on")
    for m in models.get("data", []):
        table.add_row(
            m["id"] + (f" → {m['alias_of']}" if m.get("alias_of") else ""),
            "yes" if m.get("loaded") else "no",
            _locations(m),
            ", ".join(m.get("feasible_on", [])) or "-",
        )
    console.print(table)


@main.command(epilog="Example:\n\n\b\n  cortex models --json | jq '.data[].id'")
@_client_options
def models(endpoint: str, api_key: str | None, as_json: bool) -> None:
    """List the models the fleet serves or can load (GET /v1/models)."""
    (data,) = _fetch(endpoint, api_key, ["/v1/models"])
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        return
    table = Table("id", "loaded", "locations", "capabilities", "context", "alias of")
    for m in data.get("data", []):
        table.add_row(
            m["id"],
            "yes" if m.get("loaded") else "no",
            _locations(m),
            ", ".join(m.get("capabilities", [])) or "-",
            str(m.get("limit", {}).get("context", "-")),
            m.get("alias_of") or "-",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
