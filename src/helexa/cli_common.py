"""What every helexa program's CLI shares: `--version`, the event loop, log levels."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import click

from helexa.version import version_line

LEVELS = click.Choice(["debug", "info", "warning", "error"], case_sensitive=False)


def version_option(prog: str) -> Callable[[Any], Any]:
    """`--version` prints `{prog} {version} ({sha})` and exits 0."""

    def show(ctx: click.Context, _: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            click.echo(version_line(prog))
            ctx.exit(0)

    return click.option(
        "--version",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=show,
        help="Print the version and git sha, then exit.",
    )


def log_options(f: Any) -> Any:
    """`--log-level` and `--log-format`, as every long-running helexa program takes them."""
    f = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Human lines or one JSON object per line.",
    )(f)
    return click.option(
        "--log-level",
        type=LEVELS,
        default="info",
        show_default=True,
        help="Log verbosity (logs go to stderr).",
    )(f)


def install_uvloop() -> None:
    """uvloop where available: cheaper sockets and timers for the servers."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
