"""The engine seam: what a worker drives, whatever runs the model (torch today).

A harness is loaded once per worker process (`harnesses.load`), then the worker only calls
the methods below. `step` takes every open generation so that a batched engine can advance them
in one forward pass; the shared decode loop is `generation.step`.
"""

from __future__ import annotations

from typing import Protocol

from helexa.neuron.engine.errors import Fault, RequestError
from helexa.neuron.engine.frames import Event, Generate, ReadyInfo
from helexa.neuron.engine.generation import GenerationState, StepResult, TokenModel


class Engine(TokenModel, Protocol):
    """One loaded model in this worker process."""

    def start(self, req: Generate) -> GenerationState:
        """Check a request against the model and open its generation (no model work yet);
        raises RequestError."""
        ...

    def admits(self, state: GenerationState, running: list[GenerationState]) -> bool:
        """Whether an opened generation may start beside the running ones now (else it waits
        in the worker until one ends); one alone is always admitted."""
        ...

    def step(self, active: list[GenerationState]) -> list[StepResult]:
        """Advance each open generation by one token."""
        ...

    def cancel(self, state: GenerationState) -> list[Event]:
        """End a generation now (one `done` "cancelled", nothing if it had finished)."""
        ...

    def tokenize(self, text: str) -> list[int]: ...

    def embed(self, inputs: list[list[int]]) -> tuple[list[list[float]], int]:
        """Pooled vectors in input order and the token count; raises RequestError."""
        ...

    def memory_mb(self) -> int | None:
        """Memory this process holds for the model, measured (device memory, or RSS on CPU)."""
        ...

    def info(self) -> ReadyInfo:
        """The `ready` frame's info."""
        ...

    def classify(self, exc: Exception) -> RequestError | Fault:
        """What an exception from a request means: a Fault ends the worker, a RequestError
        ends the request."""
        ...
