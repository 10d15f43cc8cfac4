"""Scenarios: what one benchmark run does to one (target, model). A small registry, so a new
scenario is one class with an `id`, a `prompt_size_approx` and `async run(target, model)`.

- `chat:{N}` — one streamed chat with ≈N prompt tokens;
- `concurrency:{N}` — N parallel `chat:128` streams: aggregate tok/s and p50/p99 TTFT;
- `cold_load` — neuron only: unload, then time load + first token of a small chat.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from helexa.bench.targets import StreamResult, Target, TargetError, clip
from helexa.config.bench import Scenarios as ScenariosConfig

# Deterministic filler: varied words so BPE tokenizers do not collapse it into a few tokens.
_FILLER = (
    "The river carried seven lanterns past the old mill while a quiet fox counted stones "
    "beside the bridge and the baker sang about winter apples near the harbour gate. "
)
NO_THINK = " /no_think"
CHARS_PER_TOKEN = 4
CONCURRENCY_PROMPT = 128
COLD_LOAD_PROMPT = 16
COLD_LOAD_MAX_TOKENS = 16


@dataclass
class RunResult:
    """The measurement columns of one run (RunRow minus the target/build labels), plus extra."""

    ok: bool
    max_tokens: int
    error: str | None = None
    ttft_s: float | None = None
    decode_tps: float | None = None
    total_s: float | None = None
    completion_tokens: int | None = None
    prompt_tokens_actual: int | None = None
    extra: dict[str, Any] | None = None

    @classmethod
    def failed(cls, max_tokens: int, error: str) -> RunResult:
        return cls(ok=False, max_tokens=max_tokens, error=clip(error))

    @classmethod
    def from_stream(cls, res: StreamResult, max_tokens: int) -> RunResult:
        return cls(
            ok=res.ok,
            max_tokens=max_tokens,
            error=res.error,
            ttft_s=res.ttft_s,
            decode_tps=res.decode_tps,
            total_s=res.total_s,
            completion_tokens=res.completion_tokens,
            prompt_tokens_actual=res.prompt_tokens,
        )


def filler(chars: int) -> str:
    """`chars` characters of filler text (before the /no_think suffix)."""
    reps = chars // len(_FILLER) + 1
    return (_FILLER * reps)[: max(chars, 1)].rstrip()


@dataclass
class PromptBuilder:
    """Sizes filler prompts per (target, model): tokenize once, scale the text, cache it."""

    cache: dict[tuple[str, str, int], str] = field(default_factory=dict)

    async def messages(self, target: Target, model: str, tokens: int) -> list[dict[str, Any]]:
        key = (target.name, model, tokens)
        text = self.cache.get(key)
        if text is None:
            text = await self._size(target, model, tokens)
            self.cache[key] = text
        return [{"role": "user", "content": text}]

    @staticmethod
    async def _size(target: Target, model: str, tokens: int) -> str:
        chars = tokens * CHARS_PER_TOKEN
        text = filler(chars) + NO_THINK
        for _ in range(2):  # one or two corrections reach a few percent
            count = await target.tokenize_count(model, [{"role": "user", "content": text}])
            if count is None:
                break
            if abs(count - tokens) <= max(2, tokens // 50):
                break
            chars = max(1, round(chars * tokens / count))
            text = filler(chars) + NO_THINK
        return text


class Scenario:
    """Base class: subclasses set `id`, `prompt_size_approx` and implement `run`."""

    family: ClassVar[str] = ""
    id: str
    prompt_size_approx: int
    max_tokens: int

    def applies_to(self, target: Target) -> bool:
        return True

    async def run(self, target: Target, model: str) -> RunResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<scenario {self.id}>"


def chat_body(model: str, messages: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    return {"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}


class ChatScenario(Scenario):
    """`chat:{N}`: one streamed request with ≈N prompt tokens, temperature 0."""

    family = "chat"

    def __init__(self, size: int, max_tokens: int, prompts: PromptBuilder) -> None:
        self.id = f"chat:{size}"
        self.prompt_size_approx = size
        self.max_tokens = max_tokens
        self.prompts = prompts

    async def run(self, target: Target, model: str) -> RunResult:
        messages = await self.prompts.messages(target, model, self.prompt_size_approx)
        res = await target.stream_chat(chat_body(model, messages, self.max_tokens))
        return RunResult.from_stream(res, self.max_tokens)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of a handful of streams is their max, not an interpolation)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


class ConcurrencyScenario(Scenario):
    """`concurrency:{N}`: N parallel chat:128 streams. ttft_s = p50, decode_tps = aggregate
    completion tok/s over the shared wall window; p99 and the stream count go in extra."""

    family = "concurrency"

    def __init__(self, streams: int, max_tokens: int, prompts: PromptBuilder) -> None:
        self.id = f"concurrency:{streams}"
        self.streams = streams
        self.prompt_size_approx = CONCURRENCY_PROMPT
        self.max_tokens = max_tokens
        self.prompts = prompts

    async def run(self, target: Target, model: str) -> RunResult:
        messages = await self.prompts.messages(target, model, CONCURRENCY_PROMPT)
        body = chat_body(model, messages, self.max_tokens)
        t0 = time.monotonic()
        results = await asyncio.gather(*(target.stream_chat(body) for _ in range(self.streams)))
        wall = time.monotonic() - t0
        failed = [r for r in results if not r.ok]
        ok = [r for r in results if r.ok]
        completion = sum(r.completion_tokens or 0 for r in ok)
        ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
        extra: dict[str, Any] = {
            "streams": self.streams,
            "streams_ok": len(ok),
            "aggregate_tps": completion / wall if ok and wall > 0 else None,
            "ttft_p50": statistics.median(ttfts) if ttfts else None,
            "ttft_p99": percentile(ttfts, 99) if ttfts else None,
        }
        return RunResult(
            ok=not failed,
            max_tokens=self.max_tokens,
            error=clip(f"{len(failed)}/{self.streams} streams failed: {failed[0].error}")
            if failed
            else None,
            ttft_s=extra["ttft_p50"],
            decode_tps=extra["aggregate_tps"],
            total_s=wall,
            completion_tokens=completion if ok else None,
            prompt_tokens_actual=ok[0].prompt_tokens if ok else None,
            extra=extra,
        )


class ColdLoadScenario(Scenario):
    """`cold_load`: unload, then time `/models/load` and the first token of a small chat.
    ttft_s is from the load request to that first token (what a cold caller waits);
    extra carries load_s and the warm part (first_token_s)."""

    family = "cold_load"

    def __init__(self, max_tokens: int, prompts: PromptBuilder) -> None:
        self.id = "cold_load"
        self.prompt_size_approx = COLD_LOAD_PROMPT
        self.max_tokens = min(max_tokens, COLD_LOAD_MAX_TOKENS)
        self.prompts = prompts

    def applies_to(self, target: Target) -> bool:
        return target.supports_cold_load

    async def run(self, target: Target, model: str) -> RunResult:
        # Size the prompt while the model is still warm: /tokenize must not race the unload.
        messages = await self.prompts.messages(target, model, COLD_LOAD_PROMPT)
        try:
            await target.unload(model)
        except (TargetError, OSError, TimeoutError) as exc:
            return RunResult.failed(self.max_tokens, f"unload failed: {exc}")
        t0 = time.monotonic()
        try:
            await target.load(model)
        except (TargetError, OSError, TimeoutError) as exc:
            return RunResult.failed(self.max_tokens, f"load failed: {exc}")
        load_s = time.monotonic() - t0
        res = await target.stream_chat(chat_body(model, messages, self.max_tokens))
        out = RunResult.from_stream(res, self.max_tokens)
        out.extra = {"load_s": load_s, "first_token_s": res.ttft_s}
        out.ttft_s = load_s + res.ttft_s if res.ttft_s is not None else None
        out.total_s = load_s + res.total_s if res.total_s is not None else None
        return out


Factory = Callable[[ScenariosConfig, PromptBuilder], Iterable[Scenario]]


def _chat(cfg: ScenariosConfig, prompts: PromptBuilder) -> Iterable[Scenario]:
    return [ChatScenario(n, cfg.max_tokens, prompts) for n in cfg.prompt_sizes]


def _concurrency(cfg: ScenariosConfig, prompts: PromptBuilder) -> Iterable[Scenario]:
    return [ConcurrencyScenario(n, cfg.max_tokens, prompts) for n in cfg.concurrency]


def _cold_load(cfg: ScenariosConfig, prompts: PromptBuilder) -> Iterable[Scenario]:
    return [ColdLoadScenario(cfg.max_tokens, prompts)] if cfg.cold_load else []


# Ordered: cold_load last, so the warm scenarios measure a model that has been serving.
REGISTRY: dict[str, Factory] = {
    "chat": _chat,
    "concurrency": _concurrency,
    "cold_load": _cold_load,
}


def build_scenarios(cfg: ScenariosConfig, prompts: PromptBuilder | None = None) -> list[Scenario]:
    """Every scenario the `[scenarios]` section asks for, in registry order."""
    prompts = prompts or PromptBuilder()
    return [s for factory in REGISTRY.values() for s in factory(cfg, prompts)]
