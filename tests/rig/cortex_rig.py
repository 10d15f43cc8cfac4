"""The cortex test harness: a real gateway on an ephemeral loopback port, and TOML helpers.

Lives outside conftest.py so tests import it by a unique module name (several conftest.py files
exist in this tree).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helexa.cortex.gateway import Gateway

NODE_TOKEN = "node-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def write_toml(path: Path, tables: dict[str, Any]) -> None:
    """A tiny TOML writer for test configs: scalars, [table]s and [[array]]s of tables."""
    lines: list[str] = []

    def emit(prefix: str, obj: dict[str, Any]) -> None:
        scalars = {k: v for k, v in obj.items() if not _is_table(v)}
        for k, v in scalars.items():
            lines.append(f'"{k}" = {toml_value(v)}' if "/" in k else f"{k} = {toml_value(v)}")
        for k, v in obj.items():
            if isinstance(v, dict) and _is_table(v):
                lines.append(f"\n[{prefix}{k}]")
                emit(f"{prefix}{k}.", v)
            elif isinstance(v, list) and _is_table(v):
                for item in v:
                    lines.append(f"\n[[{prefix}{k}]]")
                    emit(f"{prefix}{k}.", item)

    emit("", tables)
    path.write_text("\n".join(lines) + "\n")


def _is_table(v: Any) -> bool:
    if isinstance(v, dict):
        return True
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


@dataclass
class Cortex:
    """A running gateway: its Gateway object, its URLs, and metric helpers."""

    gw: Gateway
    url: str
    metrics_url: str

    @property
    def base(self) -> str:
        return self.url + "/v1"

    def metric(self, name: str, **labels: str) -> float:
        v = self.gw.metrics.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    async def poll(self) -> None:
        await self.gw.poller.poll_all()


CortexFactory = Callable[..., Awaitable[Cortex]]
