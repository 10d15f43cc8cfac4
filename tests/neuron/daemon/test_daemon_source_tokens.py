"""The operator's Hugging Face token goes only to the Hugging Face endpoint. A loopback HTTP
server poses as a model registry; a real neuron (real `huggingface_hub` download path) loads from
it, and the test reads the Authorization header the registry received."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from daemon_rig import NeuronFactory
from daemon_rig import start_neuron as start_neuron  # the fixture

from helexa.config.loader import ConfigError
from helexa.config.neuron import NeuronConfig, load_neuron_settings

HF_SECRET = "hf_operator_secret_token"
MIRROR_SECRET = "mirror-own-secret"


class Registry:
    """Answers every request 404 RepoNotFound and remembers its Authorization header."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, request.headers.get("Authorization")))
        return web.json_response(
            {"error": "Repository not found"}, status=404, headers={"X-Error-Code": "RepoNotFound"}
        )

    @property
    def auth(self) -> set[str | None]:
        return {a for _, a in self.seen}


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    reg = Registry()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", reg.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    reg.url = f"http://127.0.0.1:{port}"
    yield reg
    await runner.cleanup()


@pytest.fixture(autouse=True)
def operator_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The operator exported HF_TOKEN; no stored login, no offline mode."""
    monkeypatch.setenv("HF_TOKEN", HF_SECRET)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


async def load_from(start_neuron: NeuronFactory, tmp_path: Path, sources: object) -> int:
    rig = await start_neuron(sources=sources, cache_dir=str(tmp_path / "cache"))
    r = await rig.load("mirror:org/model")
    return r.status_code


async def test_other_source_never_gets_hf_token(
    start_neuron: NeuronFactory, registry: Registry, tmp_path: Path
) -> None:
    status = await load_from(start_neuron, tmp_path, {"mirror": registry.url})
    assert status in (404, 502)
    assert registry.seen, "the registry was never asked"
    assert registry.auth == {None}  # neither HF_TOKEN nor huggingface_hub's own fallback


async def test_source_token_env_is_sent_to_that_source_only(
    start_neuron: NeuronFactory,
    registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MIRROR_TOKEN", MIRROR_SECRET)
    sources = {"mirror": {"endpoint": registry.url, "token_env": "MIRROR_TOKEN"}}
    await load_from(start_neuron, tmp_path, sources)
    assert registry.seen
    assert registry.auth == {f"Bearer {MIRROR_SECRET}"}


async def test_hugging_face_source_still_gets_hf_token(
    start_neuron: NeuronFactory,
    registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HF_ENDPOINT is the operator's own pointer for the Hugging Face source (a mirror they
    run): HF_TOKEN follows it there, as huggingface_hub does."""
    monkeypatch.setenv("HF_ENDPOINT", registry.url)
    rig = await start_neuron(cache_dir=str(tmp_path / "cache"))
    await rig.load("org/model")
    assert registry.seen
    assert registry.auth == {f"Bearer {HF_SECRET}"}


async def test_overriding_the_hugging_face_scheme_drops_hf_token(
    start_neuron: NeuronFactory, registry: Registry, tmp_path: Path
) -> None:
    """`[sources] huggingface = "..."` replaces the endpoint; HF_TOKEN is not sent there."""
    rig = await start_neuron(sources={"huggingface": registry.url}, cache_dir=str(tmp_path))
    await rig.load("org/model")
    assert registry.seen and registry.auth == {None}


def test_http_source_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="helexa.config"):
        NeuronConfig.model_validate({"sources": {"plain": "http://10.0.0.5:8080"}})
        NeuronConfig.model_validate({"sources": {"tls": "https://registry.example"}})
    warned = [r.getMessage() for r in caplog.records if "http://" in r.getMessage()]
    assert len(warned) == 1 and "'plain'" in warned[0]


def test_token_env_must_be_set_and_is_never_echoed(tmp_path: Path) -> None:
    cfg = tmp_path / "neuron.toml"
    cfg.write_text('[sources.mirror]\nendpoint = "https://m.example"\ntoken_env = "MIRROR_TOKEN"\n')
    with pytest.raises(ConfigError) as ei:
        load_neuron_settings(cfg, explicit=True, environ={})
    assert "sources.mirror.token_env" in str(ei.value) and "$MIRROR_TOKEN is unset" in str(ei.value)
    settings = load_neuron_settings(cfg, explicit=True, environ={"MIRROR_TOKEN": "x"})
    assert settings.sources["mirror"] == "https://m.example"
    assert settings.source_token_env == {"mirror": "MIRROR_TOKEN"}
