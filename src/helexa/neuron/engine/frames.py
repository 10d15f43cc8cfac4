"""The typed frames of the worker protocol; protocol.py encodes and decodes them.

Field meanings are in protocol.py's docstring; this module only names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from helexa.neuron.engine.loader import LoadSpec

# ---- daemon -> worker ---------------------------------------------------------------------------


@dataclass(slots=True)
class Load:
    spec: LoadSpec


@dataclass(slots=True)
class Constraint:
    """A grammar the output must match; before `after` appears the model writes freely."""

    grammar: str  # an llguidance grammar: Lark syntax, JSON schemas inline via %json{...}
    after: str | None = None  # e.g. "</think>": generate freely until this marker, then constrain


@dataclass(slots=True)
class Generate:
    id: str
    prompt_ids: list[int]
    max_tokens: int | None = None
    sampling: dict[str, Any] | None = None
    stop: list[str] = field(default_factory=list)
    hold: list[str] = field(default_factory=list)
    return_token_ids: bool = False
    constraint: Constraint | None = None


@dataclass(slots=True)
class Cancel:
    id: str


@dataclass(slots=True)
class Embed:
    id: str
    inputs: list[list[int]]


@dataclass(slots=True)
class Ping:
    id: str


@dataclass(slots=True)
class Shutdown:
    pass


Op = Load | Generate | Cancel | Embed | Ping | Shutdown


# ---- worker -> daemon ---------------------------------------------------------------------------


@dataclass(slots=True)
class Progress:
    phase: str
    done_bytes: int | None = None
    total_bytes: int | None = None


@dataclass(slots=True)
class ReadyInfo:
    """What a loaded worker reports about its model (the daemon's views read these fields)."""

    harness: str = ""  # "" until a worker reported: views fall back to the requested harness
    devices: list[int] = field(default_factory=lambda: [0])
    vram_used_mb: int | None = None
    quant: str | None = None
    dtype: str | None = None
    max_position_embeddings: int | None = None
    capabilities: list[str] = field(default_factory=lambda: ["text"])
    load_secs: float = 0.0
    embedding_dim: int | None = None
    vocab_size: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    model_type: str | None = None
    static_cache: bool = False
    compiled: bool = False
    max_batch: int | None = None  # generations one forward decodes (torch), None: not reported
    batching_refused: str | None = None  # why a torch model decodes one at a time


@dataclass(slots=True)
class Ready:
    info: ReadyInfo


@dataclass(slots=True)
class LoadFailed:
    status: int
    code: str
    message: str
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Delta:
    id: str
    text: str
    tokens: int


@dataclass(slots=True)
class Done:
    id: str
    finish_reason: str
    stop_reason: str | None
    completion_tokens: int
    token_ids: list[int] | None = None
    cached_tokens: int = 0  # prompt tokens whose KV state was reused (prefix cache)


@dataclass(slots=True)
class Error:
    id: str
    code: str
    message: str
    param: str | None = None


@dataclass(slots=True)
class Embedding:
    id: str
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass(slots=True)
class Pong:
    id: str
    vram_used_mb: int | None


@dataclass(slots=True)
class FaultReport:
    kind: str
    detail: str


Event = Progress | Ready | LoadFailed | Delta | Done | Error | Embedding | Pong | FaultReport
