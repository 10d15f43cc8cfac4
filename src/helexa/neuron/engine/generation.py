"""The decode loop: every engine's generations advance here, one token per step.

A `GenerationState` is one request on the worker: prefill on its first step, then one token per
step until EOS, a stop string, a completed grammar or `max_tokens`. The engine supplies the model
work through three hooks (`logits`, `pick`, `release`); everything else (EOS, stop strings, held
markers, the grammar's progress, the frames) is decided here, so a second harness or a batched
step reuses it unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from helexa.neuron.engine.detok import Detokenizer
from helexa.neuron.engine.frames import Delta, Done, Event

if TYPE_CHECKING:
    from helexa.neuron.engine.constraint import Constrained
    from helexa.neuron.engine.logit_bias import LogitBias


class Observer(Protocol):
    """What the loop tells the sampler: each token it kept (for the penalties)."""

    def observe(self, token: int) -> None: ...


@dataclass(slots=True, eq=False)
class GenerationState:
    """One request in flight on the worker (the daemon's side of it is a `Stream`)."""

    id: str
    prompt: list[int]
    max_tokens: int
    sampler: Observer
    detok: Detokenizer
    want_ids: bool = False
    token_ids: list[int] = field(default_factory=list)
    finished: bool = False
    cache: Any = None  # the engine's per-request cache, None before prefill and after the end
    slot: int | None = None
    keep_logits: bool = False  # tests: keep the last step's logits in `last_logits`
    last_logits: Any = None
    uncovered: int = 0  # sampled tokens no delta has counted yet
    cached_tokens: int = 0  # prompt tokens the engine did not have to prefill
    bias: LogitBias | None = None  # logit_bias, applied by the engine's `pick`
    constraint: Constrained | None = None  # the grammar: `pick` masks, the loop advances it

    @property
    def step_no(self) -> int:
        """Steps count per request from 0 (the token sampled from the prefill logits)."""
        return len(self.token_ids)


class TokenModel(Protocol):
    """The engine hooks the loop drives."""

    eos_ids: frozenset[int]

    def logits(self, state: GenerationState) -> Any:
        """Prefill (no cache yet) or one decode step; the model's scores at the last position,
        or None while a long prefill goes a chunk a step (no token this step)."""
        ...

    def pick(self, state: GenerationState, logits: Any) -> int:
        """Sample the next token; raises Fault on non-finite scores."""
        ...

    def release(self, state: GenerationState) -> None:
        """Give the request's cache back."""
        ...


@dataclass(slots=True)
class StepResult:
    """What one step did to one generation: frames to send, or the exception it raised."""

    state: GenerationState
    events: list[Event]
    error: Exception | None = None


def step(model: TokenModel, active: list[GenerationState]) -> list[StepResult]:
    """Advance every open generation by one token (one forward each, for now)."""
    out: list[StepResult] = []
    for state in active:
        try:
            out.append(StepResult(state, _advance(model, state)))
        except Exception as e:
            cancel(model, state)  # releases the cache; its frame is not sent
            out.append(StepResult(state, [], e))
    return out


def _advance(model: TokenModel, s: GenerationState) -> list[Event]:
    if s.finished:
        return []
    if len(s.token_ids) >= s.max_tokens:
        return _finish(model, s, "length")
    logits = model.logits(s)
    if logits is None:
        return []
    if s.keep_logits:
        s.last_logits = logits
    tok = model.pick(s, logits)
    s.token_ids.append(tok)
    if tok in model.eos_ids:
        return _finish(model, s, "stop")
    if s.constraint is not None:
        s.constraint.advance(tok)
    s.sampler.observe(tok)
    s.uncovered += 1
    text = s.detok.push(tok)
    events: list[Event] = []
    if text:
        events.append(_delta(s, text))
    if s.detok.stop_reason is not None:
        events.append(_done(model, s, "stop", s.detok.stop_reason))
    elif s.constraint is not None and s.constraint.complete:
        events += _finish(model, s, "stop")
    elif len(s.token_ids) >= s.max_tokens:
        events += _finish(model, s, "length")
    return events


def _delta(s: GenerationState, text: str) -> Delta:
    n, s.uncovered = s.uncovered, 0
    return Delta(s.id, text, n)


def _finish(model: TokenModel, s: GenerationState, reason: str) -> list[Event]:
    events: list[Event] = []
    tail = s.detok.flush()
    if tail:
        events.append(_delta(s, tail))
    if s.detok.stop_reason is not None:
        reason = "stop"
    events.append(_done(model, s, reason, s.detok.stop_reason))
    return events


def _done(model: TokenModel, s: GenerationState, reason: str, stop_reason: str | None) -> Done:
    s.finished = True
    model.release(s)
    s.cache = None
    ids = list(s.token_ids) if s.want_ids else None
    return Done(s.id, reason, stop_reason, len(s.token_ids), ids, s.cached_tokens)


def cancel(model: TokenModel, s: GenerationState) -> list[Event]:
    """The client went away: stop now, send no more text, one `done` "cancelled"."""
    if s.finished:
        return []
    return [_done(model, s, "cancelled", None)]
