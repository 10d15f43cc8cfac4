"""Stamps each built package with the commit it came from (read by helexa.version), so
`/version` of an installed wheel names its commit with no git checkout at hand."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

STAMP = "_build_stamp.json"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def stamp() -> dict[str, object]:
    """HELEXA_BUILD_SHA (builds from an sdist or a container) wins over the checkout's HEAD;
    SOURCE_DATE_EPOCH, when set, makes the timestamp reproducible."""
    sha = os.environ.get("HELEXA_BUILD_SHA", "").strip()
    dirty = False
    if not sha:
        sha = _git("rev-parse", "HEAD") or "unknown"
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
    built = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    return {"git_sha_long": sha, "git_dirty": dirty, "build_timestamp": built}


class StampedBuildPy(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout's git instead
        target = Path(self.build_lib) / "helexa" / STAMP
        target.write_text(json.dumps(stamp()) + "\n")


setup(cmdclass={"build_py": StampedBuildPy})
