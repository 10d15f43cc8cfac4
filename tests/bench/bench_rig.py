"""Rig for the bench runner tests: a fake OpenAI-compatible engine (llama.cpp/vLLM stand-in) on
127.0.0.1, plus config helpers. A plain module, importable by a unique name."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from helexa.config.bench import BenchConfig


class FakeOpenAI:
    """Streams `chunks` content tokens `stream_delay` apart, then a usage chunk and [DONE].

    `status` ≠ 200 answers chat with an error envelope; `usage=False` omits the usage chunk.
    `peak` records the most chat streams open at once (for the concurrency scenario).
    """

    def __init__(self, models: list[str] | None = None) -> None:
        self.models = models if models is not None else ["llama-3b"]
        self.chunks = 5
        self.stream_delay = 0.01
        self.prompt_tokens = 130
        self.status = 200
        self.usage = True
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.open = 0
        self.peak = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.05)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.auth.append(request.headers.get("authorization"))
        if self.status != 200:
            err = {"message": "engine exploded", "type": "server_error", "code": "boom"}
            return web.json_response({"error": err}, status=self.status)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            for i in range(self.chunks):
                await asyncio.sleep(self.stream_delay)
                chunk = {"choices": [{"index": 0, "delta": {"content": f"tok{i} "}}]}
                await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            final = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
            await resp.write(b"data: " + orjson.dumps(final) + b"\n\n")
            if self.usage:
                usage = {
                    "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.chunks,
                    "total_tokens": self.prompt_tokens + self.chunks,
                }
                await resp.write(
                    b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n"
                )
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        finally:
            self.open -= 1
        return resp


def bench_config(
    tmp: Path,
    targets: list[dict[str, Any]],
    *,
    samples: int = 2,
    prompt_sizes: tuple[int, ...] = (16,),
    concurrency: tuple[int, ...] = (),
    cold_load: bool = False,
    max_tokens: int = 8,
    timeout: float = 30,
) -> BenchConfig:
    """A fast config: no pauses, few samples, tiny prompts."""
    return BenchConfig.model_validate(
        {
            "bench": {
                "samples_per_version": samples,
                "iteration_pause_secs": 0,
                "request_timeout_secs": timeout,
                "db_path": str(tmp / "bench.sqlite"),
            },
            "scenarios": {
                "prompt_sizes": list(prompt_sizes),
                "max_tokens": max_tokens,
                "concurrency": list(concurrency),
                "cold_load": cold_load,
            },
            "targets": targets,
        }
    )
