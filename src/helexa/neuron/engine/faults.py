"""Test-only fault injection, wrapped around an engine from outside (never in production code).

The worker wraps its engine in a `FaultyEngine` only when the load spec carries a `FaultPlan`
and HELEXA_TEST_FAULTS=1 is in its environment; otherwise the engine runs untouched.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from typing import Any

from helexa.neuron.engine import generation
from helexa.neuron.engine.base import Engine
from helexa.neuron.engine.errors import Fault, RequestError
from helexa.neuron.engine.frames import Event, Generate, ReadyInfo
from helexa.neuron.engine.generation import GenerationState, StepResult
from helexa.neuron.engine.loader import FaultPlan

log = logging.getLogger("helexa.neuron.engine")


class FaultyEngine:
    """An engine that misbehaves on cue: slow steps, a SIGKILL, poisoned logits, a script."""

    def __init__(self, engine: Engine, plan: FaultPlan) -> None:
        self.inner = engine
        self.plan = plan
        self.eos_ids = engine.eos_ids
        self.script: list[int] | None = None
        if plan.script_ids or plan.script_text:
            self.script = list(plan.script_ids or []) or engine.tokenize(plan.script_text or "")

    def armed(self) -> bool:
        """Whether a step fault may fire now; an arm file makes it one-shot (consumed)."""
        if self.plan.arm_file is None:
            return True
        try:
            os.unlink(self.plan.arm_file)
            return True
        except FileNotFoundError:
            return False

    # ---- the loop's hooks, with the faults ----------------------------------------------------

    def logits(self, state: GenerationState) -> Any:
        k = state.step_no
        if self.plan.step_delay_secs:
            time.sleep(self.plan.step_delay_secs)
        if self.plan.exit_at_step == k and self.armed():
            log.error("test fault: killing the worker at step %d", k)
            os.kill(os.getpid(), signal.SIGKILL)
        logits = self.inner.logits(state)
        if self.plan.non_finite_at_step == k and self.armed():
            logits = logits.clone() if hasattr(logits, "clone") else logits.copy()  # torch, numpy
            logits[0] = math.nan
        return logits

    def pick(self, state: GenerationState, logits: Any) -> int:
        tok = self.inner.pick(state, logits)
        if self.script is None:
            return tok
        k = state.step_no
        return self.script[k] if k < len(self.script) else min(self.eos_ids, default=tok)

    def release(self, state: GenerationState) -> None:
        self.inner.release(state)

    # ---- the rest of the engine, unchanged ----------------------------------------------------

    def step(self, active: list[GenerationState]) -> list[StepResult]:
        return generation.step(self, active)

    def cancel(self, state: GenerationState) -> list[Event]:
        return generation.cancel(self, state)

    def start(self, req: Generate) -> GenerationState:
        return self.inner.start(req)

    def admits(self, state: GenerationState, running: list[GenerationState]) -> bool:
        return self.inner.admits(state, running)

    def tokenize(self, text: str) -> list[int]:
        return self.inner.tokenize(text)

    def embed(self, inputs: list[list[int]]) -> tuple[list[list[float]], int]:
        return self.inner.embed(inputs)

    def memory_mb(self) -> int | None:
        return self.inner.memory_mb()

    def info(self) -> ReadyInfo:
        return self.inner.info()

    def classify(self, exc: Exception) -> RequestError | Fault:
        return self.inner.classify(exc)
