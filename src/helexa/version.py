"""Which build is live: BuildInfo for `/version` and `--version` (contract §2.3)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from pathlib import Path

from helexa import __version__
from helexa.wire.neuron import BuildInfo

_STAMP = Path(__file__).with_name("_build_sha.txt")


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


def git_sha_long() -> tuple[str, bool]:
    """HELEXA_BUILD_SHA, else the stamped file, else `git rev-parse`, else unknown."""
    env = os.environ.get("HELEXA_BUILD_SHA", "").strip()
    if env:
        return env, False
    if _STAMP.exists():
        stamped = _STAMP.read_text().strip()
        if stamped:
            return stamped, False
    found = _git()
    return found if found is not None else ("unknown", False)


def build_info(features: tuple[str, ...] = ()) -> BuildInfo:
    sha, dirty = git_sha_long()
    return BuildInfo(
        package_version=__version__,
        git_sha=sha[:7] if sha != "unknown" else sha,
        git_sha_long=sha if sha != "unknown" else None,
        git_dirty=dirty,
        python_version=platform.python_version(),
        platform=f"{sys.platform}-{platform.machine()}",
        features=list(features),
    )


def version_line(prog: str) -> str:
    info = build_info()
    return f"{prog} {info.package_version} ({info.git_sha})"
