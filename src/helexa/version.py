"""Which build is live: BuildInfo for `/version` and `--version`."""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from helexa import __version__
from helexa.wire.neuron import BuildInfo

_STAMP = Path(__file__).with_name("_build_stamp.json")  # written by setup.py at build time


@functools.cache
def _git() -> tuple[str, bool] | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha, bool(dirty)) if sha else None


@functools.cache
def _stamp() -> dict[str, object]:
    try:
        data = json.loads(_STAMP.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def git_sha_long() -> tuple[str, bool]:
    """HELEXA_BUILD_SHA, else the build stamp, else `git rev-parse`, else unknown."""
    env = os.environ.get("HELEXA_BUILD_SHA", "").strip()
    if env:
        return env, False
    stamped = _stamp().get("git_sha_long")
    if isinstance(stamped, str) and stamped and stamped != "unknown":
        return stamped, _stamp().get("git_dirty") is True
    found = _git()
    return found if found is not None else ("unknown", False)


def build_info(features: tuple[str, ...] = ()) -> BuildInfo:
    sha, dirty = git_sha_long()
    built = _stamp().get("build_timestamp")
    return BuildInfo(
        package_version=__version__,
        git_sha=sha[:7] if sha != "unknown" else sha,
        git_sha_long=sha if sha != "unknown" else None,
        git_dirty=dirty,
        build_timestamp=built if isinstance(built, str) else None,
        python_version=platform.python_version(),
        platform=f"{sys.platform}-{platform.machine()}",
        features=list(features),
    )


def version_line(prog: str) -> str:
    info = build_info()
    return f"{prog} {info.package_version} ({info.git_sha})"
