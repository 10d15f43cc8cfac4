"""What a request may ask of the sampler, checked and merged with the model's defaults.

Apart from the samplers themselves (torch's `sampling.py`, numpy's `sampling_np.py`) so that a
harness without torch (llamacpp) resolves a request exactly as the torch one does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
)


class SamplingError(ValueError):
    """A sampling field with a wrong type or range; `field` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"'{field}' {problem}")
        self.field = field


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


def _num(field: str, v: Any, *, integer: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SamplingError(field, "must be a number")
    if integer and not (isinstance(v, int) or float(v).is_integer()):
        raise SamplingError(field, "must be an integer")
    if not math.isfinite(v):
        raise SamplingError(field, "must be finite")
    return float(v)


def resolve(
    requested: Mapping[str, Any] | None, defaults: Mapping[str, Any] | None = None
) -> SamplingParams:
    """Request fields over the model's generation_config over the built-in defaults.

    A field that is absent or null falls through; a bad value raises SamplingError.
    """
    merged: dict[str, Any] = dict(defaults or {})
    for k, v in (requested or {}).items():
        if k in FIELDS and v is not None:
            merged[k] = v
    t = _num("temperature", merged.get("temperature", 1.0))
    if t < 0:
        raise SamplingError("temperature", "must be >= 0")
    top_p = _num("top_p", merged.get("top_p", 1.0))
    if not 0 < top_p <= 1:
        raise SamplingError("top_p", "must be in (0, 1]")
    top_k = _num("top_k", merged.get("top_k", 0), integer=True)
    if top_k < 0:
        raise SamplingError("top_k", "must be >= 0")
    min_p = _num("min_p", merged.get("min_p", 0.0))
    if not 0 <= min_p <= 1:
        raise SamplingError("min_p", "must be in [0, 1]")
    rep = _num("repetition_penalty", merged.get("repetition_penalty", 1.0))
    if rep <= 0:
        raise SamplingError("repetition_penalty", "must be > 0")
    pres = _num("presence_penalty", merged.get("presence_penalty", 0.0))
    freq = _num("frequency_penalty", merged.get("frequency_penalty", 0.0))
    seed = merged.get("seed")
    if seed is not None:
        seed = int(_num("seed", seed, integer=True))
    return SamplingParams(t, top_p, int(top_k), min_p, rep, pres, freq, seed)
