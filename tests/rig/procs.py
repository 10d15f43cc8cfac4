"""Processes a test started, seen through /proc: who is alive, who they started."""

from __future__ import annotations

import os
import time
from pathlib import Path


def _stat(pid: int | str) -> list[str] | None:
    """The fields after `(comm)` of /proc/PID/stat (comm may hold spaces), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _ppid_map() -> dict[int, int]:
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(entry)) is not None:
            out[int(entry)] = int(fields[1])
    return out


def children(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is `pid`."""
    return [c for c, parent in _ppid_map().items() if parent == pid and alive(c)]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first found, then theirs)."""
    parents = _ppid_map()
    found: list[int] = []
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found.extend(kids)
        frontier.extend(kids)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_gone(pids: list[int], secs: float) -> list[int]:
    """Wait until none of `pids` is alive; the ones still alive after `secs`."""
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if alive(p)]
