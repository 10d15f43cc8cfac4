"""OpenAI's `logit_bias`: per-token amounts added to the logits before sampling.

It comes as `sampling.logit_bias` ({"<token id>": bias in [-100, 100]}). As OpenAI describes it,
-100 bans a token: it is applied as -inf, so a banned token never comes whatever its logit; +100
all but forces one. Numpy only, so both harnesses use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from helexa.neuron.engine.errors import RequestError

_FIELD = "logit_bias"


@dataclass(frozen=True, slots=True)
class LogitBias:
    ids: np.ndarray  # intp, unique token ids
    values: np.ndarray  # float32, -inf for a ban

    def apply(self, logits: np.ndarray) -> None:
        """Add the biases to float32 logits of shape (vocab,), in place."""
        logits[self.ids] += self.values


def _bad(problem: str) -> RequestError:
    return RequestError("invalid_value", f"'{_FIELD}' {problem}", _FIELD)


def logit_bias(sampling: Mapping[str, Any] | None, vocab_size: int) -> LogitBias | None:
    """The request's biases, checked against this model's vocabulary; None when it has none."""
    raw = (sampling or {}).get(_FIELD)
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise _bad('must be an object of {"<token id>": bias}')
    ids: list[int] = []
    values: list[float] = []
    for key, v in raw.items():
        try:
            tok = int(key)
        except (TypeError, ValueError):
            raise _bad(f"has the key {key!r}, not a token id") from None
        if not 0 <= tok < vocab_size:
            raise _bad(f"holds {tok}, not a token id of this model (0..{vocab_size - 1})")
        if isinstance(v, bool) or not isinstance(v, int | float) or not -100 <= v <= 100:
            raise _bad(f"for token {tok} must be a number in [-100, 100]")
        ids.append(tok)
        values.append(-np.inf if v == -100 else float(v))
    if not ids:
        return None
    if len(set(ids)) != len(ids):
        raise _bad("names a token id twice")
    return LogitBias(np.array(ids, dtype=np.intp), np.array(values, dtype=np.float32))
