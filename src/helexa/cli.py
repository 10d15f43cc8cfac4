"""`helexa`: the single-host stack. `helexa up` runs one neuron and one cortex."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import click

from helexa.cli_common import LEVELS, version_option
from helexa.config.loader import ConfigError, is_loopback
from helexa.up import configs
from helexa.up.banner import Served, is_downloaded, model_lines
from helexa.up.configs import ModelArg, UpConfigError, host_port, url_host
from helexa.up.preflight import config_warnings
from helexa.up.supervise import Child, Stack, get_json


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=(
        "Example:\n\n\b\n  helexa up\n  helexa up --model Qwen/Qwen3-0.6B --model ~/models/my-qwen"
    ),
)
@version_option("helexa")
def main() -> None:
    """helexa: self-hosted LLM serving on your own GPUs.

    `helexa up` runs the whole stack on this machine: the neuron (loads models, runs inference)
    and the cortex gateway (one OpenAI- and Anthropic-compatible API) in front of it.
    """


@main.command(
    epilog=(
        "Example:\n\n\b\n"
        "  helexa up --model Qwen/Qwen3-0.6B\n"
        "  helexa up --model ./my-finetune --host 0.0.0.0\n"
        "  curl http://127.0.0.1:31313/v1/models\n\n"
        "Logs go to DIR/logs/neuron.log and DIR/logs/cortex.log."
    )
)
@click.option(
    "--config-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where cortex.toml, models.toml and neuron.toml live; written with defaults on the "
    "first run (default: $XDG_CONFIG_HOME/helexa, i.e. ~/.config/helexa).",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="ID_OR_PATH",
    help="Serve and pre-warm this model: a hub id (Qwen/Qwen3-0.6B, scheme:org/name) or a local "
    "model directory (served as local/<basename>). Repeatable; added to the files once.",
)
@click.option(
    "--host",
    help=f"Address the neuron and cortex API listen on (default: the files', {configs.DEFAULT_HOST}"
    " on the first run). 0.0.0.0 exposes them to the network (refused unless cortex.toml has"
    " require_auth = true). Metrics stay where cortex.toml puts them (loopback).",
)
@click.option("--port", type=click.IntRange(1, 65535), help="cortex API port (default 31313).")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="cortex Prometheus metrics port (default 31314).",
)
@click.option("--neuron-port", type=click.IntRange(1, 65535), help="neuron port (default 13131).")
@click.option(
    "--log-level",
    type=LEVELS,
    default="info",
    show_default=True,
    help="Log verbosity of the neuron and cortex (their logs go to DIR/logs/).",
)
@click.option(
    "--startup-timeout",
    type=click.FloatRange(1),
    default=120,
    show_default=True,
    help="Seconds to wait for the stack to become healthy before giving up.",
)
def up(
    config_dir: Path | None,
    models: tuple[str, ...],
    host: str | None,
    port: int | None,
    metrics_port: int | None,
    neuron_port: int | None,
    log_level: str,
    startup_timeout: float,
) -> None:
    """Run a neuron and a cortex on this machine, restart them if they die, and stop both on
    Ctrl-C or SIGTERM.

    The first run writes commented cortex.toml, models.toml and neuron.toml (mode 0600, with a
    fresh node token shared by cortex and neuron) and a catalogue of Qwen3 models with the
    aliases helexa/small, helexa/balanced and helexa/large. Hub models download on first use.
    The flags override the addresses in the files for this run.
    """
    directory = (config_dir or configs.default_config_dir()).expanduser().absolute()
    try:
        parsed = [configs.parse_model_arg(m) for m in models]
        written = configs.ensure(
            directory,
            parsed,
            host=host or configs.DEFAULT_HOST,
            port=port or configs.DEFAULT_PORT,
            metrics_port=metrics_port or configs.DEFAULT_METRICS_PORT,
            neuron_port=neuron_port or configs.DEFAULT_NEURON_PORT,
        )
        plan = Plan.make(directory, host, port, metrics_port, neuron_port)
        plan.check_exposure()
    except UpConfigError as e:
        click.echo(f"helexa: {e}", err=True)
        sys.exit(2)
    for p in written.created:
        click.echo(f"helexa: wrote {p}")
    for mid in written.added:
        click.echo(f"helexa: added {mid} (served by cortex, pre-warmed by the neuron)")
    try:
        for w in config_warnings(directory, plan.env):
            click.echo(f"helexa: warning: {w}", err=True)
    except ConfigError as e:
        click.echo(f"helexa: config error: {e}", err=True)
        sys.exit(2)
    busy = plan.busy_ports()
    if busy:
        click.echo(
            f"helexa: {busy} is already in use (another helexa up?); free it or pick other "
            "ports with --port / --metrics-port / --neuron-port",
            err=True,
        )
        sys.exit(1)

    def say(line: str) -> None:
        click.echo(line)
        sys.stdout.flush()

    stack = plan.stack(log_level, say, startup_timeout)
    stack.on_ready = lambda: say(plan.banner(parsed))
    sys.exit(stack.run())


class Plan:
    """Effective addresses (flags over files) and the environment the children run with."""

    api: tuple[str, int]
    metrics: tuple[str, int]
    node: tuple[str, int]
    neuron_url: str
    api_url: str
    metrics_url: str
    token: str | None
    api_key: str | None
    admin_key: str | None
    require_auth: bool

    def __init__(self, directory: Path, cortex: dict[str, Any], neuron: dict[str, Any]) -> None:
        self.directory = directory
        self.cortex_cfg = cortex
        self.neuron_cfg = neuron
        self.env = _child_env()

    @classmethod
    def make(
        cls,
        directory: Path,
        host: str | None,
        port: int | None,
        metrics_port: int | None,
        neuron_port: int | None,
    ) -> Plan:
        cortex = configs.read(directory / "cortex.toml")
        neuron = configs.read(directory / "neuron.toml")
        self = cls(directory, cortex, neuron)
        gw = cortex.get("gateway") or {}
        self.api = _split(gw.get("listen"), "0.0.0.0", configs.DEFAULT_PORT)
        self.metrics = _split(gw.get("metrics_listen"), "0.0.0.0", configs.DEFAULT_METRICS_PORT)
        self.node = _split(neuron.get("listen"), "0.0.0.0", configs.DEFAULT_NEURON_PORT)
        if host is not None:  # not the metrics: they name keys and accounts
            self.api, self.node = (host, self.api[1]), (host, self.node[1])
        if port is not None:
            self.api = (self.api[0], port)
        if metrics_port is not None:
            self.metrics = (self.metrics[0], metrics_port)
        if neuron_port is not None:
            self.node = (self.node[0], neuron_port)
        if host is not None or port is not None:
            self.env["CORTEX_GATEWAY__LISTEN"] = host_port(*self.api)
        if metrics_port is not None:
            self.env["CORTEX_GATEWAY__METRICS_LISTEN"] = host_port(*self.metrics)
        self.neuron_url = f"http://{url_host(self.node[0])}:{self.node[1]}"
        if host is not None or neuron_port is not None:
            self.env["NEURON_LISTEN"] = host_port(*self.node)
            self.env["NEURON_BIND_URL"] = self.neuron_url
            self._point_cortex_at_neuron()
        self.token = os.environ.get("NEURON_TOKEN") or (neuron.get("auth") or {}).get("token")
        ent = cortex.get("entitlements") or {}
        keys = [k for k in ent.get("keys", []) if isinstance(k, dict)]
        self.api_key = os.environ.get("HELEXA_API_KEY") or _first_key(keys, admin=False)
        self.admin_key = _first_key(keys, admin=True)
        self.require_auth = bool(ent.get("require_auth"))
        self.api_url = f"http://{url_host(self.api[0])}:{self.api[1]}"
        self.metrics_url = f"http://{url_host(self.metrics[0])}:{self.metrics[1]}/metrics"
        return self

    def check_exposure(self) -> None:
        """A listener other hosts can reach needs keys: without them anyone on the network
        could use the models and read every tenant's history."""
        if self.require_auth:
            return
        for what, (h, p) in (("cortex", self.api), ("neuron", self.node)):
            if not is_loopback(h):
                raise UpConfigError(
                    f"{what} would listen on {host_port(h, p)}, reachable from other hosts, "
                    "with require_auth = false: set require_auth = true in "
                    f"{self.directory / 'cortex.toml'} or use a loopback --host (127.0.0.1)"
                )

    def _point_cortex_at_neuron(self) -> None:
        """The `local` neuron moved: hand cortex its whole [[neurons]] list with that one
        endpoint changed (an env value replaces the list)."""
        nodes = [dict(n) for n in self.cortex_cfg.get("neurons", []) if isinstance(n, dict)]
        changed = False
        for n in nodes:
            if n.get("name") == configs.LOCAL_NODE and n.get("endpoint") != self.neuron_url:
                n["endpoint"] = self.neuron_url
                changed = True
        if changed:
            self.env["CORTEX_NEURONS"] = _inline_toml(nodes)

    def busy_ports(self) -> str | None:
        for h, p in (self.node, self.api, self.metrics):
            try:
                family = socket.AF_INET6 if ":" in h else socket.AF_INET
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((h, p))
            except OSError:
                return host_port(h, p)
        return None

    def stack(self, log_level: str, say: Any, startup_timeout: float) -> Stack:
        logs = self.directory / "logs"

        def child(name: str, module: str, cfg: dict[str, Any]) -> Child:
            return Child(
                name=name,
                argv=[
                    sys.executable,
                    "-m",
                    module,
                    "serve",
                    "--config",
                    str(self.directory / f"{name}.toml"),
                    "--log-level",
                    log_level,
                ],
                env=self.env,
                log_path=logs / f"{name}.log",
                grace=float(_grace(cfg)),
            )

        return Stack(
            neuron=child("neuron", "helexa.neuron.cli", self.neuron_cfg),
            cortex=child("cortex", "helexa.cortex.cli", self.cortex_cfg.get("gateway") or {}),
            neuron_url=self.neuron_url,
            cortex_url=self.api_url,
            token=self.token,
            say=say,
            startup_timeout=startup_timeout,
        )

    # -- the banner ----------------------------------------------------------------------------

    def served(self) -> list[Served]:
        """Every id clients may send, from cortex itself when it answers."""
        data = get_json(f"{self.api_url}/v1/models", self.api_key)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            return [
                Served(str(m.get("id")), bool(m.get("loaded")), m.get("alias_of"))
                for m in data["data"]
                if isinstance(m, dict)
            ]
        cat = configs.read(self.directory / "models.toml")
        out = [Served(str(m.get("id"))) for m in cat.get("models", []) if isinstance(m, dict)]
        out += [Served(a, alias_of=str(t)) for a, t in (cat.get("aliases") or {}).items()]
        return out

    def banner(self, models: list[ModelArg]) -> str:
        header = ""
        if self.require_auth:
            header = f" -H 'authorization: Bearer {self.api_key or '$HELEXA_API_KEY'}'"
        served = self.served()
        cat = configs.read(self.directory / "models.toml").get("models", [])
        cache_dir = self.neuron_cfg.get("cache_dir")
        loaded = {s.id for s in served if s.loaded}
        missing = {
            str(m["id"])
            for m in cat
            if isinstance(m, dict)
            and "id" in m
            and not m.get("path")
            and m["id"] not in loaded
            and is_downloaded(str(m["id"]), m.get("source"), cache_dir) is False
        }
        lines = [
            "",
            "helexa is up",
            f"  API      {self.api_url}/v1   (Anthropic SDK: base URL {self.api_url})",
            f"  API key  {self.api_key or '(none in cortex.toml)'}"
            + ("" if self.require_auth else "   (optional: require_auth = false)"),
            *([f"  admin    {self.admin_key}   (dashboard, /api/*)"] if self.admin_key else []),
            f"  metrics  {self.metrics_url}",
            f"  neuron   {self.neuron_url}",
            f"  config   {self.directory}   logs {self.directory / 'logs'}",
            "",
            *model_lines(served, [m.served_id for m in models], missing, self.api_url, header),
            "",
            "Ctrl-C stops both.",
            "",
        ]
        return "\n".join(lines)


def _first_key(keys: list[dict[str, Any]], *, admin: bool) -> str | None:
    for k in keys:
        if bool(k.get("admin")) == admin and isinstance(k.get("key"), str) and k["key"]:
            return str(k["key"])
    return None


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The children read their config from --config; a stray one here would point elsewhere.
    env.pop("NEURON_CONFIG", None)
    env.pop("CORTEX_CONFIG", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _split(listen: Any, host: str, port: int) -> tuple[str, int]:
    if not isinstance(listen, str) or ":" not in listen:
        return host, port
    h, _, p = listen.rpartition(":")
    try:
        return h.strip("[]") or host, int(p)
    except ValueError:
        return host, port


def _grace(cfg: dict[str, Any]) -> float:
    v = cfg.get("shutdown_grace_secs", 60)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 60.0


def _inline_toml(nodes: list[dict[str, Any]]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return configs.q(str(v))

    tables = ", ".join(
        "{" + ", ".join(f"{k} = {value(v)}" for k, v in n.items()) + "}" for n in nodes
    )
    return f"[{tables}]"


if __name__ == "__main__":
    main()
