"""`neuron`: run the node daemon, or print what hardware it would report."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import click
import orjson

from helexa import logs
from helexa.cli_common import install_uvloop, log_options, version_option
from helexa.config.loader import ConfigError, is_loopback
from helexa.config.neuron import DEFAULT_PATH, NeuronConfig, load_neuron_settings

CONFIG_HELP = (
    "neuron.toml to read (default: $NEURON_CONFIG, then /etc/neuron/neuron.toml). "
    "Env vars NEURON_KEY / NEURON_SECTION__KEY override any key; NEURON_TOKEN is [auth] token."
)


def _settings(config_path: Path | None) -> NeuronConfig:
    """An explicit path (flag or $NEURON_CONFIG) must exist; a missing default runs on
    defaults. Config errors exit 2."""
    env_path = os.environ.get("NEURON_CONFIG")
    explicit = config_path is not None or bool(env_path)
    path = config_path or Path(env_path or DEFAULT_PATH)
    try:
        return load_neuron_settings(path, explicit=explicit)
    except ConfigError as e:
        click.echo(f"neuron: config error: {e}", err=True)
        sys.exit(2)


def refuse_exposed(cfg: NeuronConfig) -> None:
    """A neuron without a token answers anyone who can reach it: beyond loopback that takes an
    explicit `allow_unauthenticated = true`. Exits 2 otherwise."""
    host = cfg.listen.rpartition(":")[0]
    if cfg.auth.token is None and not is_loopback(host) and not cfg.allow_unauthenticated:
        click.echo(
            f"neuron: refusing to listen on {cfg.listen} without a token: set [auth] token "
            "(or NEURON_TOKEN), listen on 127.0.0.1, or set allow_unauthenticated = true",
            err=True,
        )
        sys.exit(2)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=(
        "Example:\n\n\b\n  neuron serve --config /etc/neuron/neuron.toml\n"
        "  neuron discover | jq '.devices'"
    ),
)
@version_option("neuron")
def main() -> None:
    """neuron: the per-GPU-host daemon of helexa.

    It reports the host's devices, loads and unloads models on request (one worker process per
    model, PyTorch + transformers), and serves OpenAI-compatible inference for cortex.
    """


@main.command(
    epilog=(
        "Example:\n\n\b\n  neuron serve --config ./neuron.toml --log-level debug\n"
        "  NEURON_LISTEN=127.0.0.1:13131 NEURON_TOKEN=secret neuron serve"
    )
)
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help=CONFIG_HELP
)
@log_options
def serve(config_path: Path | None, log_level: str, log_format: str) -> None:
    """Run the daemon: HTTP listener, then pre-warm of [[default_models]].

    SIGTERM or Ctrl-C refuses new requests (503), lets in-flight ones finish for up to
    shutdown_grace_secs, stops every worker and exits 0.
    """
    logs.setup(log_level, log_format)
    cfg = _settings(config_path)
    refuse_exposed(cfg)
    from helexa.neuron.serve import serve as run

    install_uvloop()
    try:
        asyncio.run(run(cfg))
    except OSError as e:
        click.echo(f"neuron: cannot listen on {cfg.listen}: {e}", err=True)
        sys.exit(1)


@main.command(epilog="Example:\n\n\b\n  neuron discover --config /etc/neuron/neuron.toml")
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help=CONFIG_HELP
)
def discover(config_path: Path | None) -> None:
    """Print what GET /discovery would answer (devices, CUDA, limits) as indented JSON."""
    logs.setup("warning")
    cfg = _settings(config_path)
    from helexa.neuron.discovery import discover as probe

    out = probe(cfg).model_dump()
    if out.get("cuda_unavailable_reason") is None:
        out.pop("cuda_unavailable_reason", None)
    click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
