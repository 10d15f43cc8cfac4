"""An installed wheel names its commit: the build writes the stamp that `/version` reads."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helexa import version

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_built_wheel_carries_the_commit_and_build_time(tmp_path: Path) -> None:
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    if not head:
        pytest.skip("not a git checkout: nothing to stamp")
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    r = subprocess.run(
        [*pip, str(ROOT), "-w", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = tmp_path.glob("helexa-*.whl")
    with zipfile.ZipFile(wheel) as z:
        stamp = json.loads(z.read("helexa/_build_stamp.json"))
    assert stamp["git_sha_long"] == head
    assert isinstance(stamp["git_dirty"], bool)
    assert stamp["build_timestamp"].endswith("Z")


def test_version_reads_the_stamp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = tmp_path / "_build_stamp.json"
    sha = "0123456789abcdef0123456789abcdef01234567"
    stamp.write_text(
        json.dumps(
            {"git_sha_long": sha, "git_dirty": False, "build_timestamp": "2026-01-02T03:04:05Z"}
        )
    )
    monkeypatch.delenv("HELEXA_BUILD_SHA", raising=False)
    monkeypatch.setattr(version, "_STAMP", stamp)
    version._stamp.cache_clear()
    try:
        info = version.build_info()
    finally:
        version._stamp.cache_clear()
    assert (info.git_sha, info.git_sha_long) == ("0123456", sha)
    assert info.build_timestamp == "2026-01-02T03:04:05Z"
    assert info.git_dirty is False
