"""Catalogue hot reload on SIGHUP and on a file change; a bad edit keeps the old catalogue
."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from helexa.config.cortex import load_settings
from rig.cli_rig import clean_env, console_script
from rig.cortex_rig import NODE_TOKEN, Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron, model_info
from rig.net import free_port
from rig.toml import write_toml

ONE = "m/one"
TWO = "m/two"
CHAT = "/v1/chat/completions"


def catalogue(target: str, **extra: Any) -> dict[str, Any]:
    return {"models": [{"id": ONE}, {"id": TWO}], "aliases": {"fast": target}, **extra}


def rewrite(path: Path, text: str) -> None:
    """Replace the file as an editor would; the mtime moves on even on a coarse clock."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def rewrite_toml(path: Path, tables: dict[str, Any]) -> None:
    write_toml(path, tables)
    rewrite(path, path.read_text())


async def chat(cortex: Cortex, model: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=20) as c:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        return await c.post(cortex.url + CHAT, json=body)


@pytest.fixture
async def two_models() -> Any:
    async with FakeNeuron(models=[model_info(ONE), model_info(TWO)], token=NODE_TOKEN) as n:
        yield n


async def test_file_change_is_picked_up_by_the_next_poll(
    start_cortex: CortexFactory, two_models: FakeNeuron
) -> None:
    cortex = await start_cortex({"n1": two_models}, models=catalogue(ONE))
    assert (await chat(cortex, "fast")).headers["x-helexa-model"] == ONE
    path = cortex.gw.settings.models_path
    rewrite_toml(path, catalogue(TWO, fallbacks={ONE: [TWO]}))
    assert cortex.gw.catalogue.resolve_alias("fast") == ONE  # nothing before the poll
    await cortex.poll()
    r = await chat(cortex, "fast")
    assert r.status_code == 200, r.text
    assert r.headers["x-helexa-model"] == TWO
    assert two_models.last(CHAT).json["model"] == TWO
    assert cortex.gw.catalogue.fallbacks == {ONE: [TWO]}


async def test_unchanged_file_is_not_reread(
    start_cortex: CortexFactory, two_models: FakeNeuron, caplog: pytest.LogCaptureFixture
) -> None:
    cortex = await start_cortex({"n1": two_models}, models=catalogue(ONE))
    with caplog.at_level(logging.INFO, "helexa.cortex.reload"):
        await cortex.poll()
        assert not cortex.gw.reloader.check()
    assert caplog.records == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[aliases]\nfast = "m/two"\n[[models]\n', "invalid TOML"),
        ('[[models]]\nid = "m/one"\n[[models]]\nid = "m/one"\n', "duplicate model id 'm/one'"),
        ('[fallbacks]\n"m/one" = ["m/one"]\n', "'m/one' repeats"),
    ],
)
async def test_invalid_edit_keeps_the_old_catalogue(
    start_cortex: CortexFactory,
    two_models: FakeNeuron,
    caplog: pytest.LogCaptureFixture,
    text: str,
    problem: str,
) -> None:
    cortex = await start_cortex({"n1": two_models}, models=catalogue(ONE))
    path = cortex.gw.settings.models_path
    rewrite(path, text)
    with caplog.at_level(logging.INFO, "helexa.cortex.reload"):
        await cortex.poll()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and problem in errors[0] and str(path) in errors[0], errors
    assert "keeping the previous one" in errors[0]
    assert (await chat(cortex, "fast")).headers["x-helexa-model"] == ONE
    # Fixing the file brings the edit in on the next poll.
    rewrite_toml(path, catalogue(TWO))
    await cortex.poll()
    assert (await chat(cortex, "fast")).headers["x-helexa-model"] == TWO


async def test_deleted_file_keeps_the_old_catalogue(
    start_cortex: CortexFactory, two_models: FakeNeuron, caplog: pytest.LogCaptureFixture
) -> None:
    cortex = await start_cortex({"n1": two_models}, models=catalogue(ONE))
    cortex.gw.settings.models_path.unlink()
    with caplog.at_level(logging.ERROR, "helexa.cortex.reload"):
        await cortex.poll()
    assert any("file not found" in r.getMessage() for r in caplog.records)
    assert cortex.gw.catalogue.resolve_alias("fast") == ONE


async def test_new_model_is_placed_after_reload(start_cortex: CortexFactory) -> None:
    async with FakeNeuron(models=[], token=NODE_TOKEN) as fake:
        cortex = await start_cortex({"n1": fake}, models={})
        assert (await chat(cortex, "new/model")).status_code == 404
        rewrite_toml(cortex.gw.settings.models_path, {"models": [{"id": "new/model"}]})
        await cortex.poll()
        r = await chat(cortex, "new/model")
        assert r.status_code == 200, r.text
        assert r.headers["x-helexa-cold-start"] == "1"
        assert fake.last("/models/load").json["model_id"] == "new/model"


async def test_in_flight_stream_is_unaffected(
    start_cortex: CortexFactory, two_models: FakeNeuron
) -> None:
    cortex = await start_cortex({"n1": two_models}, models=catalogue(ONE))
    two_models.stream_delay = 0.02
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with (
        httpx.AsyncClient(timeout=20) as c,
        c.stream("POST", cortex.url + CHAT, json=body) as r,
    ):
        assert r.headers["x-helexa-model"] == ONE
        rewrite_toml(cortex.gw.settings.models_path, {"models": []})
        await cortex.poll()
        text = (await r.aread()).decode()
    assert text.count("token") == 4 and text.rstrip().endswith("[DONE]")
    assert cortex.gw.catalogue.models == []


# ---- a real `cortex serve` and SIGHUP ---------------------------------------------------------


async def wait_line(lines: asyncio.StreamReader, needle: str, seen: list[str]) -> str:
    async with asyncio.timeout(20):
        while True:
            raw = await lines.readline()
            if not raw:
                pytest.fail(f"cortex exited before logging {needle!r}:\n" + "".join(seen))
            seen.append(raw.decode())
            if needle in seen[-1]:
                return seen[-1]


async def aliases(url: str) -> dict[str, str]:
    async with httpx.AsyncClient(timeout=10) as c:
        data = (await c.get(url + "/v1/models")).json()["data"]
    return {e["id"]: e["alias_of"] for e in data if "alias_of" in e}


async def test_sighup_reloads_a_running_cortex(tmp_path: Path, two_models: FakeNeuron) -> None:
    exe = console_script("cortex")
    port = free_port()
    write_toml(
        tmp_path / "cortex.toml",
        {
            "gateway": {
                "listen": f"127.0.0.1:{port}",
                "metrics_listen": f"127.0.0.1:{free_port()}",
                "poll_interval_secs": 3600,  # only SIGHUP can bring the edit in
                "probe_timeout_secs": 2,
            },
            "neurons": [{"name": "n1", "endpoint": two_models.url, "token": NODE_TOKEN}],
        },
    )
    models = tmp_path / "models.toml"
    write_toml(models, catalogue(ONE))
    env = clean_env(drop=("HELEXA_API_KEY",), drop_prefixes=("CORTEX_",))
    proc = await asyncio.create_subprocess_exec(
        exe,
        "serve",
        "--config",
        str(tmp_path / "cortex.toml"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_line(proc.stderr, "cortex listening on", seen)
        assert await aliases(url) == {"fast": ONE}
        rewrite_toml(models, catalogue(TWO))
        proc.send_signal(signal.SIGHUP)
        line = await wait_line(proc.stderr, "models catalogue", seen)
        assert "reloaded" in line and "SIGHUP" in line, line
        assert await aliases(url) == {"fast": TWO}
        rewrite(models, "[[models]\n")
        proc.send_signal(signal.SIGHUP)
        line = await wait_line(proc.stderr, "models catalogue", seen)
        assert "not reloaded" in line and "invalid TOML" in line, line
        assert await aliases(url) == {"fast": TWO}
        assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# ---- the files we ship --------------------------------------------------------------------------


def test_shipped_examples_load_and_match_the_readme() -> None:
    root = Path(__file__).resolve().parents[2]
    settings = load_settings(root / "examples" / "cortex.toml", explicit=True, environ={})
    assert settings.config.eviction.idle_check_secs == 5
    cat = settings.catalogue
    assert cat.fallbacks == {"Qwen/Qwen3-32B": ["Qwen/Qwen3-8B"]}
    profile = cat.get("Qwen/Qwen3-8B")
    assert profile is not None and profile.keep_alive_secs == 1800
    readme = (root / "README.md").read_text()
    for name in ("cortex.toml", "models.toml"):
        text = (root / "examples" / name).read_text()
        assert f"```toml\n{text}```" in readme, f"README's copy of examples/{name} differs"
