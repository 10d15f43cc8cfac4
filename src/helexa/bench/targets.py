"""Benchmark targets: thin clients for a neuron or any OpenAI-compatible server.

A target answers two questions for the sweep — which build is it, and which models are warm —
and measures one streamed chat request with a monotonic clock. The neuron kind reads `/version`,
`/models` and `/discovery`; the openai kind (llama.cpp, vLLM, Ollama, cortex) has no build
endpoint, so its build is the operator's `version` label and its models come from config or
`/v1/models`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from helexa.config.bench import Target as TargetConfig
from helexa.wire.neuron import BuildInfo, Discovery, ModelInfo

ERROR_MAX = 500


class TargetError(Exception):
    """The target could not tell us its build or models; the sweep skips it this round."""


@dataclass(frozen=True)
class ModelEntry:
    """One warm model on a target, with what the store needs to label its runs."""

    id: str
    harness: str
    quant: str | None = None


@dataclass
class TargetInfo:
    """What one probe learned: the build that stamps every run, and the models to run."""

    build: BuildInfo
    build_json: str
    models: list[ModelEntry]
    hostname: str | None = None
    gpu: str | None = None


@dataclass
class StreamResult:
    """One streamed chat request measured (times in seconds, monotonic clock)."""

    ok: bool
    error: str | None = None
    ttft_s: float | None = None
    decode_tps: float | None = None
    total_s: float | None = None
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    # monotonic stamps, so concurrency can compute an aggregate over a shared window
    t0: float = 0.0
    t_end: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def clip(message: str) -> str:
    """Errors are stored, so keep them short (at most 500 characters)."""
    return message if len(message) <= ERROR_MAX else message[: ERROR_MAX - 1] + "…"


def gpu_label(discovery: Discovery) -> str | None:
    """`"{count}× {name}"` per device name (without `NVIDIA GeForce `), `"CPU"` for cpu devices,
    joined with `" + "`; None with no devices."""
    names: Counter[str] = Counter()
    for dev in discovery.devices:
        if dev.kind == "cpu":
            names["CPU"] += 0  # listed once, never counted
            continue
        names[dev.name.replace("NVIDIA GeForce ", "").strip() or dev.kind] += 1
    parts = [name if name == "CPU" else f"{n}× {name}" for name, n in names.items()]
    return " + ".join(parts) or None


def _err_text(status: int, body: bytes) -> str:
    try:
        payload = orjson.loads(body)
        err = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(err, dict):
            return f"HTTP {status}: {err.get('code') or err.get('type')}: {err.get('message')}"
    except orjson.JSONDecodeError:
        pass
    return f"HTTP {status}: {body.decode(errors='replace').strip()}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


class Target:
    """Common client: auth, JSON GETs/POSTs and the streamed chat measurement."""

    kind = "base"
    supports_cold_load = False

    def __init__(
        self,
        name: str,
        endpoint: str,
        *,
        session: aiohttp.ClientSession,
        token: str | None = None,
        timeout: float = 600,
        gpu: str | None = None,
    ) -> None:
        self.name = name
        self.endpoint = endpoint.rstrip("/")
        self.session = session
        self.timeout = timeout
        self.gpu = gpu
        self.headers = {"authorization": f"Bearer {token}"} if token else {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.endpoint!r})"

    def _timeout(self, seconds: float | None = None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=seconds or self.timeout)

    async def _get(self, path: str, timeout: float | None = None) -> Any:
        async with self.session.get(
            self.endpoint + path, headers=self.headers, timeout=self._timeout(timeout)
        ) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise TargetError(f"GET {path}: {_err_text(resp.status, body)}")
            return orjson.loads(body)

    async def _post(self, path: str, payload: dict[str, Any], timeout: float | None = None) -> Any:
        async with self.session.post(
            self.endpoint + path,
            data=orjson.dumps(payload),
            headers={**self.headers, "content-type": "application/json"},
            timeout=self._timeout(timeout),
        ) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise TargetError(f"POST {path}: {_err_text(resp.status, body)}")
            return orjson.loads(body)

    async def probe(self) -> TargetInfo:
        raise NotImplementedError

    async def tokenize_count(self, model: str, messages: list[dict[str, Any]]) -> int | None:
        """Prompt tokens as the target counts them, or None (callers fall back to 4 chars)."""
        return None

    async def unload(self, model: str) -> None:
        raise TargetError(f"{self.kind} targets cannot unload models")

    async def load(self, model: str) -> None:
        raise TargetError(f"{self.kind} targets cannot load models")

    async def stream_chat(self, body: dict[str, Any]) -> StreamResult:
        """POST a streamed chat and time it; never raises — failures come back ok=False."""
        payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
        res = StreamResult(ok=False, t0=time.monotonic())
        first: float | None = None
        last: float | None = None
        usage: dict[str, Any] | None = None
        done = False
        try:
            async with self.session.post(
                self.endpoint + "/v1/chat/completions",
                data=orjson.dumps(payload),
                headers={**self.headers, "content-type": "application/json"},
                timeout=self._timeout(),
            ) as resp:
                if resp.status != 200:
                    res.error = clip(_err_text(resp.status, await resp.read()))
                    return res
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        done = True
                        break
                    chunk = orjson.loads(data)
                    if not isinstance(chunk, dict):
                        continue
                    if "error" in chunk:
                        res.error = clip(f"stream error: {orjson.dumps(chunk['error']).decode()}")
                        return res
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        if delta.get("content") or delta.get("reasoning_content"):
                            now = time.monotonic()
                            first = first if first is not None else now
                            last = now
            end = time.monotonic()
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, ValueError) as exc:
            res.error = clip(_describe(exc))
            return res
        res.t_end = end
        res.total_s = end - res.t0
        if first is not None:
            res.ttft_s = first - res.t0
        if not done:
            res.error = "stream ended without [DONE]"
            return res
        if usage is None:
            res.error = "stream carried no usage chunk"
            return res
        res.completion_tokens = usage.get("completion_tokens")
        res.prompt_tokens = usage.get("prompt_tokens")
        n = res.completion_tokens or 0
        if first is not None and last is not None and n >= 2 and last > first:
            res.decode_tps = (n - 1) / (last - first)
        res.ok = True
        return res


class NeuronTarget(Target):
    """A helexa neuron, called directly with its node token; only `loaded` models are run."""

    kind = "neuron"
    supports_cold_load = True

    async def probe(self) -> TargetInfo:
        try:
            raw_version = await self._get("/version", timeout=min(self.timeout, 30))
            build = BuildInfo.model_validate(raw_version)
            models = [ModelInfo.model_validate(m) for m in await self._get("/models", 30)]
        except TargetError:
            raise
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TargetError(f"{self.endpoint} is unreachable: {_describe(exc)}") from exc
        hostname, gpu = None, self.gpu
        try:
            disc = Discovery.model_validate(await self._get("/discovery", 30))
            hostname = disc.hostname
            gpu = gpu or gpu_label(disc)
        except (TargetError, aiohttp.ClientError, TimeoutError, ValueError):
            pass  # labels only: a missing /discovery must not stop the benchmark
        return TargetInfo(
            build=build,
            build_json=orjson.dumps(raw_version).decode(),
            models=[
                ModelEntry(m.id, m.harness or "unknown", m.quant)
                for m in models
                if m.status == "loaded"
            ],
            hostname=hostname,
            gpu=gpu,
        )

    async def tokenize_count(self, model: str, messages: list[dict[str, Any]]) -> int | None:
        try:
            reply = await self._post("/tokenize", {"model": model, "messages": messages}, 30)
        except (TargetError, aiohttp.ClientError, TimeoutError, ValueError):
            return None
        count = reply.get("count") if isinstance(reply, dict) else None
        return count if isinstance(count, int) and count > 0 else None

    async def unload(self, model: str) -> None:
        await self._post("/models/unload", {"model_id": model})

    async def load(self, model: str) -> None:
        """Given only the id, the neuron reuses the spec of the last load."""
        await self._post("/models/load", {"model_id": model})


class OpenAITarget(Target):
    """Any OpenAI-compatible server; build = the configured `version` label."""

    kind = "openai"

    def __init__(
        self,
        name: str,
        endpoint: str,
        *,
        session: aiohttp.ClientSession,
        models: list[str] | None = None,
        version: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(name, endpoint, session=session, **kw)
        self.models = list(models or [])
        self.version = version or "unknown"

    async def probe(self) -> TargetInfo:
        ids = self.models
        if not ids:
            try:
                listing = await self._get("/v1/models", timeout=min(self.timeout, 30))
            except TargetError:
                raise
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise TargetError(f"{self.endpoint} is unreachable: {_describe(exc)}") from exc
            ids = [m["id"] for m in listing.get("data", []) if isinstance(m, dict) and "id" in m]
        build = BuildInfo(package_version=self.version, git_sha=self.version)
        return TargetInfo(
            build=build,
            build_json=build.model_dump_json(),
            models=[ModelEntry(i, "openai") for i in ids],
            gpu=self.gpu,
        )


def make_target(cfg: TargetConfig, session: aiohttp.ClientSession, timeout: float) -> Target:
    """Build the client for one `[[targets]]` entry."""
    common: dict[str, Any] = {
        "session": session,
        "timeout": timeout,
        "gpu": cfg.gpu,
        "token": cfg.bearer(),
    }
    if cfg.kind == "openai":
        return OpenAITarget(
            cfg.name, cfg.endpoint, models=cfg.models, version=cfg.version, **common
        )
    return NeuronTarget(cfg.name, cfg.endpoint, **common)
