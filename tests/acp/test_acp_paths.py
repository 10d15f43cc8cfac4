"""Path expansion (`~`, `~/`, `$HOME`, `$HOME/`, relative, `..`, symlinks), the plan directory
name, and the mode policy: what is free, what asks, what plan mode refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from helexa.acp.paths import expand, fnv1a32, is_within, plan_dir
from helexa.acp.policy import SHELL_DISABLED, Policy, Refused


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    return h.resolve()


@pytest.mark.parametrize(
    ("raw", "rel"), [("~", ""), ("~/a/b", "a/b"), ("$HOME", ""), ("$HOME/a", "a")]
)
def test_home_forms(home: Path, raw: str, rel: str) -> None:
    assert expand(raw, Path("/somewhere")) == (home / rel if rel else home)


def test_relative_dotdot_and_symlink(tmp_path: Path) -> None:
    cwd = tmp_path / "proj"
    (cwd / "src").mkdir(parents=True)
    assert expand("src/x.py", cwd) == (cwd / "src/x.py").resolve()
    assert not is_within(expand("../other", cwd), cwd)
    (cwd / "escape").symlink_to(tmp_path)
    assert not is_within(expand("escape/secret", cwd), cwd)
    assert expand("~user", cwd) == (cwd / "~user").resolve()  # not a home form


def test_plan_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert fnv1a32(b"") == 0x811C9DC5 and fnv1a32(b"a") == 0xE40C292C
    cwd = Path("/work/my-proj")
    assert (
        plan_dir(cwd) == tmp_path / "helexa-acp/plans" / f"my-proj-{fnv1a32(str(cwd).encode()):08x}"
    )


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    (tmp_path / "proj").mkdir()
    return (tmp_path / "proj").resolve()


def policy(mode: str, cwd: Path) -> Policy:
    return Policy(mode, cwd, cwd.parent / "plans" / "proj-1")


def test_default_mode(cwd: Path) -> None:
    p = policy("default", cwd)
    assert p.decide("read", cwd / "a") == "allow"
    assert p.decide("read", cwd.parent / "b") == "ask"  # outside needs permission, reads too
    assert p.decide("write", cwd / "a") == "ask"
    assert p.decide("execute", cwd) == "ask"


def test_bypass_mode(cwd: Path) -> None:
    p = policy("bypassPermissions", cwd)
    for action in ("read", "write", "execute"):
        assert p.decide(action, Path("/etc/hosts")) == "allow"


def test_plan_mode(cwd: Path) -> None:
    p = policy("plan", cwd)
    assert p.decide("read", cwd / "a") == "allow"
    assert p.decide("read", Path("/etc/hosts")) == "ask"
    assert p.decide("write", p.plan_root / "plan.md") == "allow"
    refused = p.decide("write", cwd / "a")
    assert isinstance(refused, Refused) and "plan mode" in refused.reason
    assert p.decide("execute", cwd) == Refused(SHELL_DISABLED)
    assert SHELL_DISABLED == "plan mode: shell execution is disabled"
