"""The per-request checks every harness makes before any model work, so they answer alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from helexa.neuron.engine.detok import Decoder, Detokenizer
from helexa.neuron.engine.errors import RequestError
from helexa.neuron.engine.frames import Generate
from helexa.neuron.engine.generation import GenerationState, Observer
from helexa.neuron.engine.sampling_params import SamplingError, SamplingParams, resolve


def check_ids(ids: list[int], vocab_size: int, field: str) -> list[int]:
    for t in ids:
        if not 0 <= t < vocab_size:
            raise RequestError(
                "invalid_value",
                f"'{field}' holds {t!r}, not a token id of this model (0..{vocab_size - 1})",
                field,
            )
    return ids


def check_length(n: int, cap: int | None) -> None:
    if cap is not None and n > cap:
        raise RequestError(
            "context_length_exceeded", f"prompt is {n} tokens; this neuron accepts at most {cap}"
        )


def not_embedding_only(embedding_only: bool, served_id: str) -> None:
    if embedding_only:
        raise RequestError(
            "unsupported_model_capability",
            f"model '{served_id}' is an embedding model; use /v1/embeddings",
        )


def sampling_params(asked: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> SamplingParams:
    try:
        return resolve(asked, defaults)
    except SamplingError as e:
        raise RequestError("invalid_value", str(e), e.field) from None


def open_generation(
    req: Generate, prompt: list[int], max_tokens: int, sampler: Observer, decoder: Decoder
) -> GenerationState:
    """The request's state for the loop: its sampler, and a detokenizer with its stop strings
    and held markers."""
    return GenerationState(
        req.id,
        prompt,
        max_tokens,
        sampler,
        Detokenizer(decoder, stop=req.stop, hold=req.hold),
        want_ids=req.return_token_ids,
    )
