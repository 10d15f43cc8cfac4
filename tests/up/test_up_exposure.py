"""Issue 11, `helexa up`: a key is required by default, a non-loopback --host needs auth, and a
full disk never leaves an empty or half-written config file behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from click.testing import CliRunner

from helexa.cli import Plan, main
from helexa.up import configs


def test_first_run_requires_a_key_and_writes_an_admin_key(tmp_path: Path) -> None:
    configs.ensure(tmp_path, [])
    cortex = tomllib.loads((tmp_path / "cortex.toml").read_text())
    ent = cortex["entitlements"]
    assert ent["require_auth"] is True
    user, admin = ent["keys"]
    assert not user.get("admin") and admin["admin"] is True
    assert user["key"] != admin["key"]
    assert cortex["gateway"]["metrics_listen"].startswith("127.0.0.1:")
    plan = Plan.make(tmp_path, "0.0.0.0", None, None, None)
    assert (plan.api_key, plan.admin_key) == (user["key"], admin["key"])
    assert plan.metrics[0] == "127.0.0.1"  # --host moves the API and the neuron, not metrics
    plan.check_exposure()  # auth on: any address is allowed
    banner_keys = [line for line in plan_lines(plan) if "key" in line or "admin" in line]
    assert any(admin["key"] in line for line in banner_keys)


def plan_lines(plan: Plan) -> list[str]:
    plan.served = lambda: []  # type: ignore[method-assign]
    return plan.banner([]).splitlines()


def test_non_loopback_host_without_auth_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "c"
    configs.ensure(d, [])
    path = d / "cortex.toml"
    path.write_text(path.read_text().replace("require_auth = true", "require_auth = false"))
    for host in ("0.0.0.0", "::", "192.0.2.7", "example.lan"):
        r = CliRunner().invoke(main, ["up", "--config-dir", str(d), "--host", host])
        assert r.exit_code == 2, (host, r.output)
        assert "require_auth = false" in r.stderr and "reachable from other hosts" in r.stderr
    for host in ("127.0.0.1", "::1", "localhost"):
        Plan.make(d, host, None, None, None).check_exposure()


def run_limited(d: Path, limit: int, *models: str) -> subprocess.CompletedProcess[str]:
    """`configs.ensure` in a child whose files may not grow past `limit` bytes (RLIMIT_FSIZE):
    a full disk, for real, without a tiny filesystem."""
    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        from pathlib import Path
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from helexa.up import configs
        configs.ensure(Path(sys.argv[1]), [configs.parse_model_arg(m) for m in sys.argv[2:]])
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(d), *models], capture_output=True, text=True, timeout=60
    )


def test_a_full_disk_on_the_first_run_leaves_no_empty_file(tmp_path: Path) -> None:
    d = tmp_path / "c"
    r = run_limited(d, 200)
    assert r.returncode != 0 and "File too large" in r.stderr
    assert not (d / "cortex.toml").exists()  # never a file with part of the template
    assert [p.name for p in d.iterdir()] == []  # and no temp file left behind
    configs.ensure(d, [])  # room again: the normal first run
    assert tomllib.loads((d / "cortex.toml").read_text())["entitlements"]["require_auth"]


def test_a_full_disk_while_adding_a_model_keeps_the_old_file(tmp_path: Path) -> None:
    d = tmp_path / "c"
    configs.ensure(d, [])
    before = {n: (d / n).read_text() for n in ("models.toml", "neuron.toml")}
    r = run_limited(d, len(before["models.toml"].encode()) + 10, "org/new-model")
    assert r.returncode != 0 and "File too large" in r.stderr
    for name, text in before.items():
        assert (d / name).read_text() == text, name
    assert sorted(p.name for p in d.iterdir()) == ["cortex.toml", "models.toml", "neuron.toml"]
    written = configs.ensure(d, [configs.parse_model_arg("org/new-model")])
    assert written.added == ["org/new-model"]
    for name in ("models.toml", "neuron.toml"):
        assert (d / name).stat().st_mode & 0o777 == 0o600
        assert (d / name).read_text().startswith(before[name])
