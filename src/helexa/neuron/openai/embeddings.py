"""OpenAI embeddings on the neuron: the request check and the reply."""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any

from helexa.neuron.openai.common import is_int, positive_int, require_model
from helexa.neuron.openai.params import invalid_value, unsupported_parameter

MAX_EMBED_INPUTS = 2048
_INPUT_PROBLEM = (
    "must be a string, an array of strings, an array of token ids or an array of such arrays"
)


@dataclass(slots=True)
class EmbeddingsRequest:
    """`inputs` are all strings (to tokenize) or all token-id lists."""

    model: str
    inputs: list[str] | list[list[int]]
    encoding_format: str = "float"
    dimensions: int | None = None

    @property
    def tokenized(self) -> bool:
        return bool(self.inputs) and isinstance(self.inputs[0], list)


def _token_ids(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(is_int(t) and t >= 0 for t in v)


def _embedding_inputs(v: Any) -> list[str] | list[list[int]]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise invalid_value("input", _INPUT_PROBLEM)
    if not v:
        raise invalid_value("input", "must not be empty")
    if _token_ids(v):
        return [v]
    if len(v) > MAX_EMBED_INPUTS:
        raise invalid_value("input", f"must have at most {MAX_EMBED_INPUTS} items")
    if all(isinstance(s, str) for s in v):
        if not all(v):
            raise invalid_value("input", "must not contain empty strings")
        return v
    if all(_token_ids(t) for t in v):
        return v
    raise invalid_value("input", _INPUT_PROBLEM)


def parse_embeddings(body: dict[str, Any]) -> EmbeddingsRequest:
    model = require_model(body)
    fmt = body.get("encoding_format")
    if fmt is None:
        fmt = "float"
    if fmt not in ("float", "base64"):
        raise invalid_value("encoding_format", "must be 'float' or 'base64'")
    return EmbeddingsRequest(
        model=model,
        inputs=_embedding_inputs(body.get("input")),
        encoding_format=fmt,
        dimensions=positive_int(body, "dimensions"),
    )


def check_dimensions(dimensions: int | None, native: int) -> None:
    if dimensions is not None and dimensions != native:
        raise unsupported_parameter(
            "dimensions",
            f"'dimensions' other than the model's native size ({native}) is not supported",
        )


def encode_base64(vector: list[float]) -> str:
    """Little-endian float32 bytes, base64 (what the OpenAI SDK decodes)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embeddings_reply(
    model: str,
    vectors: list[list[float]],
    prompt_tokens: int,
    encoding_format: str = "float",
    dimensions: int | None = None,
) -> dict[str, Any]:
    if vectors:
        check_dimensions(dimensions, len(vectors[0]))
    as_b64 = encoding_format == "base64"
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_base64(v) if as_b64 else v}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
