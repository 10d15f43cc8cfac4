"""OpenAI text completions on the neuron: the request checks, the reply and its stream."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from helexa.neuron.openai.common import (
    Sampling,
    check_unsupported,
    flag,
    include_usage,
    invalid_value,
    parse_sampling,
    parse_stop,
    positive_int,
    require_model,
)
from helexa.neuron.openai.params import COMPLETIONS_REFUSED, unsupported_parameter
from helexa.neuron.openai.replies import Chunks, Usage
from helexa.neuron.parse import new_id
from helexa.wire import sse

DEFAULT_MAX_TOKENS = 16

# -- text completions -------------------------------------------------------------------


@dataclass(slots=True)
class CompletionRequest:
    model: str
    prompt: str
    sampling: Sampling = field(default_factory=Sampling)
    stop: list[str] = field(default_factory=list)
    max_tokens: int | None = None  # absent: clamp_max_tokens(..., default=16)
    stream: bool = False
    include_usage: bool = False


def parse_completion(body: dict[str, Any]) -> CompletionRequest:
    model = require_model(body)
    check_unsupported(body, COMPLETIONS_REFUSED)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt):
        raise unsupported_parameter("prompt", "'prompt' with more than one string is not supported")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise invalid_value("prompt", "must be a string or an array of one string")
    return CompletionRequest(
        model=model,
        prompt=prompt,
        sampling=parse_sampling(body),
        stop=parse_stop(body),
        max_tokens=positive_int(body, "max_tokens"),
        stream=flag(body, "stream", False),
        include_usage=include_usage(body),
    )


def completion(
    model: str,
    text: str,
    finish_reason: str,
    usage: Usage,
    *,
    id: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    return {
        "id": id or new_id("cmpl-"),
        "object": "text_completion",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage.completion(),
    }


class CompletionStream(Chunks):
    """Completion SSE: `text(...)` per delta, then `end(...)` (a frame with the finish reason,
    the usage chunk if asked, `[DONE]`)."""

    __slots__ = ()
    OBJECT = "text_completion"
    ID_PREFIX = "cmpl-"

    def text(self, text: str) -> bytes:
        return self._frame({"index": 0, "text": text, "logprobs": None, "finish_reason": None})

    def final(self, finish_reason: str) -> bytes:
        return self._frame(
            {"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}
        )

    def usage(self, usage: Usage) -> bytes:
        return self.usage_frame(usage.completion())

    def end(self, finish_reason: str, usage: Usage) -> bytes:
        return self.final(finish_reason) + self.usage(usage) + sse.DONE
