"""Path handling for tools: `~`/`$HOME` expansion, the session-cwd boundary, the plan directory.

A model writes paths the way a shell user would; everything is resolved against the session's
cwd so the permission policy can tell inside from outside without trusting `..` or symlinks.
"""

from __future__ import annotations

import os
from pathlib import Path


def expand(raw: str, cwd: Path) -> Path:
    """`~`, `~/x`, `$HOME`, `$HOME/x` expanded; relative paths joined to `cwd`; `..` and
    symlinks resolved."""
    home = os.environ.get("HOME") or str(Path.home())
    if raw == "~" or raw == "$HOME":
        raw = home
    elif raw.startswith("~/"):
        raw = home + raw[1:]
    elif raw.startswith("$HOME/"):
        raw = home + raw[5:]
    p = Path(raw)
    return (p if p.is_absolute() else cwd / p).resolve(strict=False)


def is_within(path: Path, root: Path) -> bool:
    """Whether resolved `path` is `root` or below it."""
    return path.is_relative_to(root.resolve(strict=False))


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def data_home() -> Path:
    """`$XDG_DATA_HOME/helexa-acp` (default `~/.local/share/helexa-acp`)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "helexa-acp"


def plan_dir(cwd: Path) -> Path:
    """Where plan mode may write for a session in `cwd`: `plans/<basename>-<fnv1a32 hex8>/`."""
    tag = f"{fnv1a32(str(cwd).encode()):08x}"
    return data_home() / "plans" / f"{cwd.name or 'root'}-{tag}"
