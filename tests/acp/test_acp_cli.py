"""`helexa-acp` as a process: --help (with the Zed snippet), --version, config errors, logs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
INIT = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1}}\n'


def run(
    args: list[str], env: dict[str, str], stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "helexa.acp", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


def base_env(tmp_path: Path) -> dict[str, str]:
    return {
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "HELEXA_ACP_BASE_URL": "http://127.0.0.1:9/v1",  # discard port: nothing answers
    }


def test_help_shows_the_zed_settings_snippet(tmp_path: Path) -> None:
    r = run(["--help"], base_env(tmp_path))
    assert r.returncode == 0
    out = r.stdout.decode()
    snippet = re.search(r'"agent_servers": \{.*?\n\s*\}', out, re.S)
    assert snippet is not None, out
    assert json.loads("{" + snippet[0] + "}") == {
        "agent_servers": {"helexa": {"type": "custom", "command": "helexa-acp"}}
    }
    for name in ("HELEXA_ACP_CONFIG_PATH", "HELEXA_ACP_LOG_FILE", "HELEXA_ACP_LOG", "wire_api"):
        assert name in out


def test_version(tmp_path: Path) -> None:
    r = run(["--version"], base_env(tmp_path))
    assert r.returncode == 0 and r.stdout.decode().startswith("helexa-acp ")


def test_a_config_error_exits_2_with_the_message_on_stderr(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('default_endpoint = "x"\n')
    r = run([], base_env(tmp_path) | {"HELEXA_ACP_CONFIG_PATH": str(cfg)}, INIT)
    assert r.returncode == 2
    assert r.stdout == b""
    assert "config error: config has no [[endpoints]] entries" in r.stderr.decode()


def test_logs_go_to_the_log_file_at_the_chosen_level(tmp_path: Path) -> None:
    log = tmp_path / "acp.log"
    env = base_env(tmp_path) | {"HELEXA_ACP_LOG_FILE": str(log)}
    r = run([], env, INIT)
    assert r.returncode == 0 and r.stderr == b""
    assert json.loads(r.stdout)["id"] == 1  # one line: the answer
    text = log.read_text()
    assert "initialize from an unnamed client" in text and "\x1b[" not in text
    log.unlink()
    r = run([], env | {"HELEXA_ACP_LOG": "error"}, INIT)
    assert r.returncode == 0 and (not log.exists() or log.read_text() == "")


def test_logs_go_to_stderr_without_a_log_file(tmp_path: Path) -> None:
    r = run([], base_env(tmp_path) | {"HELEXA_ACP_LOG": "loud"}, INIT)
    err = r.stderr.decode()
    assert "HELEXA_ACP_LOG=loud is not one of debug, info, warning, error; using info" in err
    assert "GET http://127.0.0.1:9/v1/models failed" in err
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == [1]
