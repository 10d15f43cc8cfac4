"""The model menu: GET {base}/models per endpoint, in its own auth dialect; a dead or confused
endpoint contributes only its default model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from helexa.acp.config import Config, Endpoint
from helexa.acp.models import discover
from rig.net import free_port


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[dict[str, str]], dict[str, Any]]]:
    """A /v1/models that records headers; `replies[path]` is what it answers."""
    seen: list[dict[str, str]] = []
    replies: dict[str, Any] = {}

    async def models(request: web.Request) -> web.StreamResponse:
        seen.append(dict(request.headers) | {"path": request.path})
        reply = replies[request.path]
        if isinstance(reply, int):
            return web.json_response({"error": {"message": "no"}}, status=reply)
        if isinstance(reply, str):
            return web.Response(text=reply)
        return web.json_response(reply)

    app = web.Application()
    app.router.add_get("/{name}/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen, replies
    await runner.cleanup()


async def test_every_endpoint_is_listed_in_its_own_dialect(
    server: tuple[str, list[dict[str, str]], dict[str, Any]],
) -> None:
    url, seen, replies = server
    replies["/a/v1/models"] = {"data": [{"id": "x"}, {"id": "big"}, {"nope": 1}]}
    replies["/b/v1/models"] = {"data": [{"id": "claude-1"}]}
    replies["/c/v1/models"] = 500
    replies["/d/v1/models"] = "not json"
    cfg = Config(
        (
            Endpoint("a", f"{url}/a/v1", default_model="big", api_key="sk-a"),
            Endpoint("b", f"{url}/b/v1", "anthropic-messages", api_key="sk-b"),
            Endpoint("c", f"{url}/c/v1", default_model="only"),
            Endpoint("d", f"{url}/d/v1"),
            Endpoint("down", f"http://127.0.0.1:{free_port()}/v1", default_model="m"),
        ),
        "a",
    )
    choices = await discover(cfg)
    assert [c.value for c in choices] == ["a:big", "a:x", "b:claude-1", "c:only", "down:m"]
    by_path = {h["path"]: h for h in seen}
    assert by_path["/a/v1/models"]["Authorization"] == "Bearer sk-a"
    b = by_path["/b/v1/models"]
    assert (b["x-api-key"], b["anthropic-version"]) == ("sk-b", "2023-06-01")
    assert "Authorization" not in b
    assert "Authorization" not in by_path["/c/v1/models"]
