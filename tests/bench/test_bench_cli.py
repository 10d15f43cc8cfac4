"""The `helexa-bench` command line, run as the installed console script."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import orjson
import pytest
from bench_data import seed

from helexa.bench.store import Store
from helexa.version import version_line
from rig.cli_rig import clean_env as rig_clean_env
from rig.cli_rig import console_script, run_cli
from rig.net import free_port, listening_port


def exe() -> str:
    return console_script("helexa-bench")


def clean_env(**extra: str) -> dict[str, str]:
    return rig_clean_env(drop_prefixes=("HELEXA_BENCH_",), **extra)


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    return await run_cli(exe(), *args, env=env or clean_env(), timeout=30)


def write_config(tmp_path: Path, body: str = "", seeded: bool = True) -> Path:
    db = tmp_path / "bench.sqlite"
    if seeded:
        store = Store(db)
        seed(store)
        store.close()
    path = tmp_path / "helexa-bench.toml"
    path.write_text(f'[bench]\ndb_path = "{db}"\n{body}')
    return path


async def test_version_and_help() -> None:
    rc, out, _ = await cli("--version")
    assert rc == 0 and out.strip() == version_line("helexa-bench")
    rc, out, _ = await cli("--help")
    assert rc == 0
    assert "helexa-bench run --once" in out and "report" in out and "serve" in out
    for sub in ("run", "serve", "report"):
        rc, out, _ = await cli(sub, "--help")
        assert rc == 0 and "--config" in out and "Example" in out


async def test_report_markdown_and_json(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        '[[targets]]\nname = "alpha"\nendpoint = "http://127.0.0.1:9"\n'
        '[[targets]]\nname = "beta"\nkind = "openai"\nendpoint = "http://127.0.0.1:9"\n'
        'models = ["m1"]\nversion = "llama-b1"\n',
    )
    rc, out, err = await cli("report", "--config", str(cfg))
    assert rc == 0, err
    assert "| Host | GPU | Model | Scenario | SHA |" in out
    assert (
        "| alpha | 2× RTX 5090 | m1 | chat:128 | bbb2222 | 130 | 0.600 | 60.0 | 3.000 | 2 |" in out
    )
    assert "beta vs alpha" in out and "0.50×" in out
    rc, out, err = await cli("report", "--json", "--config", str(cfg))
    assert rc == 0, err
    rows = orjson.loads(out)
    assert [(r["target_name"], r["scenario_id"]) for r in rows] == [
        ("alpha", "chat:128"),
        ("alpha", "concurrency:4"),
        ("beta", "chat:128"),
    ]


async def test_report_env_config_path(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    rc, out, err = await cli("report", env=clean_env(HELEXA_BENCH_CONFIG=str(cfg)))
    assert rc == 0, err
    assert "bbb2222" in out
    # an env override of the db path wins over the file
    empty = tmp_path / "other.sqlite"
    env = clean_env(HELEXA_BENCH_CONFIG=str(cfg), HELEXA_BENCH_BENCH__DB_PATH=str(empty))
    rc, out, _ = await cli("report", env=env)
    assert rc == 0 and out == "No benchmark runs stored yet.\n"


@pytest.mark.parametrize(
    "body,needle",
    [
        ("[bench\n", "invalid TOML"),
        ("[bench]\nsamples_per_version = 0\n", "bench.samples_per_version"),
        ('[api]\nlisten = "nowhere"\n', "api.listen"),
        ('[[targets]]\nname = "x"\nendpoint = "ftp://x"\n', "targets.0.endpoint"),
        ('[[targets]]\nname = "x"\nendpoint = "http://x"\nkind = "vllm"\n', "targets.0.kind"),
        (
            '[[targets]]\nname = "x"\nendpoint = "http://x"\n'
            '[[targets]]\nname = "x"\nendpoint = "http://y"\n',
            "duplicate target names: x",
        ),
    ],
)
async def test_config_errors_exit_2(tmp_path: Path, body: str, needle: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    for sub in ("report", "serve", "run"):
        rc, _, err = await cli(sub, "--config", str(path))
        assert rc == 2, (sub, err)
        assert "config error" in err and needle in err


async def test_only_run_needs_the_targets_tokens(tmp_path: Path) -> None:
    """report and serve read the store and never call a target: an unset token_env is no
    error for them; run calls the targets and refuses to start without it."""
    cfg = write_config(
        tmp_path,
        '[[targets]]\nname = "alpha"\nendpoint = "http://127.0.0.1:9"\ntoken_env = "NOPE_UNSET"\n',
    )
    env = clean_env()  # NOPE_UNSET is not set here
    rc, out, err = await cli("report", "--config", str(cfg), env=env)
    assert rc == 0, err
    assert "bbb2222" in out
    rc, _, err = await cli("run", "--once", "--config", str(cfg), env=env)
    assert rc == 2 and "config error" in err and "$NOPE_UNSET is unset" in err


async def test_missing_explicit_config_and_no_targets(tmp_path: Path) -> None:
    rc, _, err = await cli("report", "--config", str(tmp_path / "nope.toml"))
    assert rc == 2 and "not found" in err
    cfg = write_config(tmp_path, seeded=False)
    rc, _, err = await cli("run", "--once", "--config", str(cfg))
    assert rc == 2 and "no [[targets]]" in err


async def first_health(
    client: httpx.AsyncClient, proc: asyncio.subprocess.Process
) -> httpx.Response:
    """Poll /api/health until the freshly started API answers (10 s at most)."""
    for _ in range(200):
        try:
            return await client.get("/api/health")
        except httpx.TransportError:
            assert proc.returncode is None, "the command exited before serving the API"
            await asyncio.sleep(0.05)
    pytest.fail("the API never answered")


async def test_serve_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, f'[api]\nlisten = "127.0.0.1:{port}"\n')
    proc = await asyncio.create_subprocess_exec(
        exe(),
        "serve",
        "--config",
        str(cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=5, trust_env=False
        ) as client:
            r = await first_health(client, proc)
            assert r.json() == {"status": "ok", "runs": 9, "last_run_ts": "2026-01-03T00:00:01Z"}
            summary = (await client.get("/api/summary")).json()
            assert len(summary) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0


async def test_serve_port_in_use_exits_1(tmp_path: Path) -> None:
    with listening_port() as port:
        cfg = write_config(tmp_path, f'[api]\nlisten = "127.0.0.1:{port}"\n')
        rc, _, err = await cli("serve", "--config", str(cfg))
    assert rc == 1 and "cannot listen" in err


def dead_target() -> str:
    return f'[[targets]]\nname = "dead"\nendpoint = "http://127.0.0.1:{free_port()}"\n'


async def test_run_once_unreachable_target_exits_1(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, dead_target(), seeded=False)
    rc, _, err = await cli("run", "--once", "--config", str(cfg))
    assert rc == 1
    assert "dead" in err and "unreachable" in err


async def test_run_loop_serves_api_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, f'[api]\nlisten = "127.0.0.1:{port}"\n' + dead_target())
    proc = await asyncio.create_subprocess_exec(
        exe(),
        "run",
        "--config",
        str(cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=5, trust_env=False
        ) as client:
            r = await first_health(client, proc)
            assert r.json()["runs"] == 9
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()


def test_config_defaults_and_env(tmp_path: Path) -> None:
    from helexa.config.bench import load_bench_config
    from helexa.config.loader import ConfigError

    c = load_bench_config(tmp_path / "absent.toml", explicit=False, environ={})
    assert (c.bench.sweep_interval_secs, c.bench.samples_per_version) == (1800, 5)
    assert (c.bench.iteration_pause_secs, c.bench.request_timeout_secs) == (2, 600)
    assert c.bench.db_path == "/var/lib/helexa-bench/bench.sqlite"
    assert (c.scenarios.prompt_sizes, c.scenarios.max_tokens) == ([128, 4096], 256)
    assert (c.scenarios.concurrency, c.scenarios.cold_load) == ([4], True)
    assert (c.api.enabled, c.api.listen, c.targets) == (True, "0.0.0.0:13132", [])

    path = tmp_path / "b.toml"
    path.write_text(
        '[[targets]]\nname = "n1"\nendpoint = "http://127.0.0.1:13131/"\ntoken_env = "TOK"\n'
        '[[targets]]\nname = "llama"\nkind = "openai"\nendpoint = "http://127.0.0.1:8080"\n'
        'models = ["qwen"]\nversion = "b4567"\napi_key = "sk-x"\n'
    )
    env = {
        "TOK": "secret",
        "HELEXA_BENCH_SCENARIOS__CONCURRENCY": "[2, 8]",
        "HELEXA_BENCH_SCENARIOS__COLD_LOAD": "false",
        "HELEXA_BENCH_BENCH__SAMPLES_PER_VERSION": "3",
    }
    c = load_bench_config(path, explicit=True, environ=env)
    assert c.scenarios.concurrency == [2, 8] and c.scenarios.cold_load is False
    assert c.bench.samples_per_version == 3
    n1, llama = c.targets
    assert (n1.kind, n1.endpoint, n1.bearer(env)) == ("neuron", "http://127.0.0.1:13131", "secret")
    assert (llama.kind, llama.models, llama.version, llama.bearer(env)) == (
        "openai",
        ["qwen"],
        "b4567",
        "sk-x",
    )

    path.write_text('[[targets]]\nname = "n"\nendpoint = "http://x"\nmodels = ["a"]\n')
    with pytest.raises(ConfigError, match="openai"):
        load_bench_config(path, explicit=True, environ={})
    path.write_text("[scenarios]\nconcurrency = [0]\n")
    with pytest.raises(ConfigError, match=r"scenarios\.concurrency"):
        load_bench_config(path, explicit=True, environ={})
