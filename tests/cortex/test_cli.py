"""The `cortex` command line, run as the installed console script."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import orjson
import pytest

from helexa import __version__
from helexa.version import version_line
from rig.cli_rig import clean_env as rig_clean_env
from rig.cli_rig import console_script
from rig.cli_rig import run_cli as run
from rig.cortex_rig import Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron


def cortex_exe() -> str:
    return console_script("cortex")


def clean_env(**extra: str) -> dict[str, str]:
    return rig_clean_env(drop=("HELEXA_API_KEY", "CORTEX_CONFIG"), **extra)


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `cortex ARGS` without blocking the loop that serves the gateway under test."""
    return await run(cortex_exe(), *args, env=env or clean_env(), timeout=30)


async def test_version() -> None:
    rc, out, _ = await run_cli("--version")
    assert rc == 0
    line = out.strip()
    assert line == version_line("cortex")
    assert re.fullmatch(r"cortex (\S+) \((\S+)\)", line)
    assert line.startswith(f"cortex {__version__} (")


@pytest.mark.parametrize("args", [[], ["serve"], ["status"], ["models"]])
async def test_help_shows_an_example(args: list[str]) -> None:
    rc, out, _ = await run_cli(*args, "--help")
    assert rc == 0
    assert "Example" in out
    assert "cortex " in out.split("Example", 1)[1]
    assert "--help" in out


async def test_status_json_against_a_running_gateway(cortex: Cortex) -> None:
    rc, out, err = await run_cli("status", "--endpoint", cortex.url, "--json")
    assert rc == 0, err
    doc = orjson.loads(out)
    assert {"health", "models"} <= set(doc)  # a newer gateway may add keys
    assert doc["health"] == {"status": "ok", "nodes": {"healthy": 1, "total": 1}}
    async with httpx.AsyncClient(timeout=10) as client:
        live = (await client.get(cortex.base + "/models")).json()
    assert doc["models"]["object"] == "list"
    assert [m["id"] for m in doc["models"]["data"]] == [m["id"] for m in live["data"]]
    entry = doc["models"]["data"][0]
    assert entry["id"] == "test-model" and entry["loaded"] is True


async def test_status_table(cortex: Cortex) -> None:
    rc, out, err = await run_cli("status", "--endpoint", cortex.url)
    assert rc == 0, err
    assert "1/1" in out
    assert "test-model" in out
    assert "mock-node:loaded" in out


async def test_status_against_a_dead_endpoint_exits_1() -> None:
    rc, out, err = await run_cli("status", "--endpoint", "http://127.0.0.1:1", "--json")
    assert rc == 1
    assert out == ""
    assert "127.0.0.1:1" in err


async def test_status_with_require_auth_uses_the_api_key(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    keys = {"require_auth": True, "keys": [{"key": "sk-cli", "account_id": "ops"}]}
    cortex = await start_cortex({"mock-node": fake}, entitlements=keys)
    rc, _, err = await run_cli("status", "--endpoint", cortex.url, "--json")
    assert rc == 1
    assert "401" in err
    rc, out, err = await run_cli(
        "status", "--endpoint", cortex.url, "--json", "--api-key", "sk-cli"
    )
    assert rc == 0, err
    assert orjson.loads(out)["health"]["status"] == "ok"
    rc, out, err = await run_cli(
        "status", "--endpoint", cortex.url, "--json", env=clean_env(HELEXA_API_KEY="sk-cli")
    )
    assert rc == 0, err


async def test_models_table_and_json(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    fake.models[0]["limit"] = {"context": 24576, "input": 16384, "output": 8192}
    cortex = await start_cortex(
        {"mock-node": fake}, models={"aliases": {"helexa/small": "test-model"}}
    )
    rc, out, err = await run_cli("models", "--endpoint", cortex.url)
    assert rc == 0, err
    rows = {line.split()[1]: line for line in out.splitlines() if "test-model" in line}
    assert "helexa/small" in rows and "test-model" in rows
    assert "mock-node:loaded" in rows["test-model"]
    assert "24576" in rows["test-model"]
    rc, out, err = await run_cli("models", "--endpoint", cortex.url, "--json")
    assert rc == 0, err
    data = orjson.loads(out)["data"]
    assert [m["id"] for m in data] == ["helexa/small", "test-model"]
    assert data[0]["alias_of"] == "test-model"


async def test_models_against_a_dead_endpoint_exits_1() -> None:
    rc, _, err = await run_cli("models", "--endpoint", "http://127.0.0.1:1")
    assert rc == 1
    assert err


async def test_serve_with_a_missing_explicit_config_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    rc, _, err = await run_cli("serve", "--config", str(missing))
    assert rc == 2
    assert str(missing) in err


async def test_usage_error_exits_2() -> None:
    rc, _, err = await run_cli("status", "--no-such-option")
    assert rc == 2
    assert "no-such-option" in err
