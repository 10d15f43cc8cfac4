"""The per-key ledger survives a restart and a kill -9 (issue 11, item 12): a real `cortex
serve` process, a fake neuron on 127.0.0.1, and the balance read back through a 429."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from rig.cli_rig import clean_env, console_script
from rig.cortex_rig import NODE_TOKEN
from rig.fake_neuron import FakeNeuron
from rig.net import free_port
from rig.toml import write_toml

KEY = "sk-persist"
CAP = 1000
CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


class Serve:
    """`cortex serve --config DIR/cortex.toml`, started and stopped by the test."""

    def __init__(self, d: Path, fake: FakeNeuron) -> None:
        self.dir = d
        self.port = free_port()
        write_toml(
            d / "cortex.toml",
            {
                "gateway": {
                    "listen": f"127.0.0.1:{self.port}",
                    "metrics_listen": f"127.0.0.1:{free_port()}",
                    "shutdown_grace_secs": 1,
                },
                "neurons": [{"name": "mock-node", "endpoint": fake.url, "token": NODE_TOKEN}],
                "entitlements": {
                    "keys": [{"key": KEY, "account_id": "acct", "key_id": "k", "hard_cap": CAP}]
                },
            },
        )
        write_toml(d / "models.toml", {})
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = clean_env(drop=("CORTEX_CONFIG",))
        with (self.dir / "cortex.log").open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                console_script("cortex"),
                "serve",
                "--config",
                str(self.dir / "cortex.toml"),
                stdout=log,
                stderr=log,
                env=env,
            )
        async with httpx.AsyncClient(timeout=2) as c:
            async with asyncio.timeout(30):
                while True:
                    assert self.proc.returncode is None, (self.dir / "cortex.log").read_text()
                    try:
                        if (await c.get(self.url + "/health")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)

    async def stop(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        await asyncio.wait_for(self.proc.wait(), 30)

    async def chat(self, body: dict[str, Any]) -> httpx.Response:
        async with httpx.AsyncClient(timeout=10) as c:
            return await c.post(
                self.url + "/v1/chat/completions",
                content=orjson.dumps(body),
                headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
            )

    async def available(self) -> int:
        """The key's balance, as a request reserving more than the whole cap is told it."""
        r = await self.chat({**CHAT, "messages": [{"role": "user", "content": "7" * CAP}]})
        assert r.status_code == 429, r.text
        m = re.search(r"(\d+) available", r.json()["error"]["message"])
        assert m is not None
        return int(m.group(1))

    def persisted(self) -> int | None:
        db = sqlite3.connect(self.dir / "ledger.sqlite3")
        try:
            row = db.execute("SELECT spent FROM ledger WHERE key_id = 'k'").fetchone()
        finally:
            db.close()
        return None if row is None else int(row[0])


@pytest.fixture
async def serve(tmp_path: Path, fake: FakeNeuron) -> AsyncIterator[Serve]:
    """A cortex process in front of conftest's fake neuron (which holds NODE_TOKEN)."""
    s = Serve(tmp_path, fake)
    try:
        yield s
    finally:
        if s.proc is not None and s.proc.returncode is None:
            await s.stop(signal.SIGKILL)


async def spend(serve: Serve, n: int) -> int:
    for _ in range(n):
        assert (await serve.chat(CHAT)).status_code == 200
    return n * 15  # the fake neuron's usage: 10 prompt + 5 completion


async def test_balance_survives_kill_9(serve: Serve) -> None:
    await serve.start()
    spent = await spend(serve, 3)
    # The writer thread commits once a second; wait for the commit, not for a second.
    async with asyncio.timeout(10):
        while serve.persisted() != spent:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await serve.stop(signal.SIGKILL)
    await serve.start()
    assert await serve.available() == CAP - spent
    spent += await spend(serve, 1)  # and it keeps counting from there
    assert await serve.available() == CAP - spent


async def test_balance_survives_a_graceful_restart_without_waiting(serve: Serve) -> None:
    await serve.start()
    spent = await spend(serve, 2)
    await serve.stop(signal.SIGTERM)  # shutdown commits what the writer had not yet
    await serve.start()
    assert await serve.available() == CAP - spent


async def test_a_stream_cut_by_shutdown_is_charged_and_kept(serve: Serve, fake: FakeNeuron) -> None:
    """Issue 11 item 2 at shutdown: a stream still running when cortex stops (after its grace)
    is charged what it used so far, and that charge is on disk when cortex comes back."""
    await serve.start()
    fake.stream_chunks, fake.stream_delay = 100, 0.2
    body = {**CHAT, "stream": True, "max_tokens": 100}
    raw = orjson.dumps(body)
    async with httpx.AsyncClient(timeout=30) as c:
        headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
        async with c.stream(
            "POST", serve.url + "/v1/chat/completions", content=raw, headers=headers
        ) as r:
            assert r.status_code == 200
            read = 0
            lines = r.aiter_lines()
            while read < 3:
                read += (await anext(lines)).startswith("data: {")
            await serve.stop(signal.SIGTERM)
    await serve.start()
    spent = CAP - await serve.available()
    assert spent >= 10 + 3  # the prompt and the frames the client read
    assert spent < len(raw) + 100  # observed, not the whole reservation


async def test_an_unwritable_ledger_is_a_config_error(tmp_path: Path, fake: FakeNeuron) -> None:
    """A budget that would silently reset on restart is refused at start, in plain words."""
    Serve(tmp_path, fake)  # writes the config
    (tmp_path / "ledger.sqlite3").mkdir()  # a directory where the file should be
    proc = await asyncio.create_subprocess_exec(
        console_script("cortex"),
        "serve",
        "--config",
        str(tmp_path / "cortex.toml"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(drop=("CORTEX_CONFIG",)),
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "config error: cannot open the ledger at" in err.decode()
    assert "Traceback" not in err.decode()
