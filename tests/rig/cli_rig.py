"""Running helexa's console scripts as real processes from async tests."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest


def console_script(name: str) -> str:
    """The installed script beside this interpreter (or on PATH); skip when not installed."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"the {name} console script is not installed")
    return found


def clean_env(
    drop: Iterable[str] = (), drop_prefixes: tuple[str, ...] = (), **extra: str
) -> dict[str, str]:
    """This environment minus proxies and the named variables, with wide, uncoloured output."""
    dropped = set(drop)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and k not in dropped and not k.startswith(drop_prefixes)
    }
    env.update(COLUMNS="200", NO_COLOR="1", **extra)
    return env


async def run_cli(
    exe: str, *args: str, env: dict[str, str], timeout: float = 60
) -> tuple[int, str, str]:
    """Run without blocking the loop that may be serving the system under test."""
    proc = await asyncio.create_subprocess_exec(
        exe,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
