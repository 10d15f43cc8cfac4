"""What the OpenAI replies share: the usage, the chunk framing, the mid-stream error frame.

Pure: a finished (or streaming) parse and the usage in, JSON objects or frame bytes out. Frames
are built from a pre-serialised head so a delta costs one small `orjson.dumps`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from helexa.neuron.parse import new_id


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the engine's prefix cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def chat(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }

    def completion(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }

    def responses(self) -> dict[str, Any]:
        return {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.total_tokens,
        }


class Chunks:
    """Shared framing: every chunk is `{id, object, created, model, choices, …}` as one line.
    With `include_usage` (the client's `stream_options`) a last chunk has `choices: []` and the
    usage; without it there is none. OpenAI also puts `"usage": null` on every other chunk when
    asked; we leave the key out (the SDKs' chunk types make it optional), because cortex always
    asks, to meter, and finds the usage chunk by its `"usage"` key without parsing each frame."""

    __slots__ = ("_head", "created", "id", "include_usage", "model")
    OBJECT = ""
    ID_PREFIX = ""

    def __init__(
        self,
        model: str,
        *,
        include_usage: bool = False,
        id: str | None = None,
        created: int | None = None,
    ) -> None:
        self.id = id or new_id(self.ID_PREFIX)
        self.model = model
        self.created = created if created is not None else int(time.time())
        self.include_usage = include_usage
        head = orjson.dumps(
            {"id": self.id, "object": self.OBJECT, "created": self.created, "model": model}
        )
        self._head = b"data: " + head[:-1] + b',"choices":'

    def _frame(self, choice: dict[str, Any]) -> bytes:
        return self._head + b"[" + orjson.dumps(choice) + b"]}\n\n"

    def usage_frame(self, usage: dict[str, Any]) -> bytes:
        """The usage chunk, or nothing when the client didn't ask for it."""
        if not self.include_usage:
            return b""
        return self._head + b'[],"usage":' + orjson.dumps(usage) + b"}\n\n"
