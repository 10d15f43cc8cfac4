"""A real `neuron serve` process with fake workers: listener before pre-warm,
SIGTERM drain with streams in flight, exit codes; and `neuron discover` on this host."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx
from daemon_rig import AUTH, TOKEN, WORKER_CMD, chat_body, model_dir, write_tokenizer

from helexa.version import version_line
from rig.cli_rig import clean_env as rig_clean_env
from rig.cli_rig import console_script
from rig.cli_rig import run_cli as run
from rig.net import free_port, listening_port
from rig.toml import write_toml


def neuron_exe() -> str:
    return console_script("neuron")


def clean_env(**extra: str) -> dict[str, str]:
    # CUDA_VISIBLE_DEVICES="": this test is about the CPU path, whatever the host
    base = {"HELEXA_NEURON_WORKER_CMD": " ".join(WORKER_CMD), "CUDA_VISIBLE_DEVICES": ""}
    return rig_clean_env(drop_prefixes=("NEURON_",), **{**base, **extra})


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await run(neuron_exe(), *args, env=env or clean_env())


async def test_sigterm_drains_streams_then_exits_0(tmp_path: Path) -> None:
    good = model_dir(tmp_path, "good", {"reply": {"pieces": ["x"] * 10, "delay": 0.08}})
    write_tokenizer(good)
    broken = model_dir(tmp_path, "broken", {"load": "load_failed"})
    write_tokenizer(broken)
    port = free_port()
    cfg = tmp_path / "neuron.toml"
    write_toml(
        cfg,
        {
            "listen": f"127.0.0.1:{port}",
            "shutdown_grace_secs": 20,
            "cpu_memory_mb": 8000,
            "auth": {"token": TOKEN},
            "admission": {"max_in_flight": 20},
            "default_models": [{"model_id": str(good)}, {"model_id": str(broken)}],
        },
    )
    proc = await asyncio.create_subprocess_exec(
        neuron_exe(),
        "serve",
        "--config",
        str(cfg),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30, trust_env=False) as c:
            deadline = time.monotonic() + 30
            while True:
                assert time.monotonic() < deadline, "neuron never became ready"
                try:
                    act = (await c.get("/health")).json()["activation"]
                    if act["state"] == "ready":
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            assert act["completed"] == ["local/good"]
            assert act["failed"][0]["model_id"] == "local/broken"
            first_token = asyncio.Event()
            started = 0

            async def stream() -> list[bytes]:
                nonlocal started
                chunks: list[bytes] = []
                body = chat_body("local/good", stream=True)
                async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    assert r.status_code == 200
                    async for chunk in r.aiter_bytes():
                        if not chunks:
                            started += 1
                            if started == 20:
                                first_token.set()
                        chunks.append(chunk)
                return chunks

            streams = [asyncio.create_task(stream()) for _ in range(20)]
            await asyncio.wait_for(first_token.wait(), 20)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            r = await c.post("/v1/chat/completions", json=chat_body("local/good"))
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
            assert r.json()["error"]["code"] == "service_unavailable"
            assert r.json()["error"]["message"] == "neuron is shutting down"
            results = await asyncio.gather(*streams)
        for chunks in results:
            raw = b"".join(chunks)
            assert raw.endswith(b"data: [DONE]\n\n")
            assert b"error" not in raw
            assert raw.count(b'"content":"x"') == 10
        rc = await asyncio.wait_for(proc.wait(), 30)
        assert rc == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_discover_prints_one_cpu_device(tmp_path: Path) -> None:
    cfg = tmp_path / "neuron.toml"
    write_toml(cfg, {"cpu_memory_mb": 1234})
    rc, out, _ = await run_cli("discover", "--config", str(cfg))
    assert rc == 0
    disc = json.loads(out)
    assert disc["devices"] == [
        {
            "index": 0,
            "kind": "cpu",
            "name": "cpu",
            "vram_total_mb": 1234,
            "compute_capability": None,
        }
    ]
    assert out.startswith("{\n  ")  # indented


async def test_cli_version_help_and_config_errors(tmp_path: Path) -> None:
    rc, out, _ = await run_cli("--version")
    assert rc == 0 and out.strip() == version_line("neuron")
    rc, out, _ = await run_cli("--help")
    assert rc == 0 and "serve" in out and "discover" in out and "Example" in out
    rc, out, _ = await run_cli("serve", "--help")
    assert rc == 0 and "--config" in out and "--log-level" in out
    rc, _, err = await run_cli("serve", "--config", str(tmp_path / "missing.toml"))
    assert rc == 2 and "config error" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("listen = 5\n")
    rc, _, err = await run_cli("discover", "--config", str(bad))
    assert rc == 2 and "listen" in err
    env = clean_env(NEURON_CONFIG=str(tmp_path / "nope.toml"))
    rc, _, err = await run_cli("discover", env=env)
    assert rc == 2


async def test_cannot_listen_exits_1(tmp_path: Path) -> None:
    with listening_port() as port:
        cfg = tmp_path / "neuron.toml"
        write_toml(cfg, {"listen": f"127.0.0.1:{port}"})
        rc, _, err = await run_cli("serve", "--config", str(cfg))
    assert rc == 1 and "cannot listen" in err


async def test_refuses_a_public_listener_without_a_token(tmp_path: Path) -> None:
    """`neuron serve` on a non-loopback address with no token exits 2 before it listens."""
    cfg = tmp_path / "neuron.toml"
    for listen in (f"0.0.0.0:{free_port()}", f"[::]:{free_port()}"):
        write_toml(cfg, {"listen": listen})
        rc, _, err = await run_cli("serve", "--config", str(cfg))
        assert rc == 2, err
        assert "refusing to listen" in err and "allow_unauthenticated" in err
    rc, _, err = await run_cli(
        "serve", "--config", str(cfg), env=clean_env(NEURON_LISTEN=f"192.0.2.1:{free_port()}")
    )
    assert rc == 2, err
    cfg.write_text("")  # what a full disk used to leave: defaults, 0.0.0.0 and no token
    rc, _, err = await run_cli("serve", "--config", str(cfg))
    assert rc == 2 and "refusing to listen" in err, err


async def test_token_or_explicit_opt_out_passes_the_gate(tmp_path: Path) -> None:
    """With a token, or `allow_unauthenticated = true`, the same address gets as far as binding
    (192.0.2.1 is not on this host, so the bind itself fails: exit 1, nothing exposed)."""
    cfg = tmp_path / "neuron.toml"
    for extra in ({"auth": {"token": TOKEN}}, {"allow_unauthenticated": True}):
        write_toml(cfg, {"listen": f"192.0.2.1:{free_port()}", **extra})
        rc, _, err = await run_cli("serve", "--config", str(cfg))
        assert rc == 1 and "cannot listen" in err, err
