"""Harness names and the quants each accepts: one table for cortex's catalogue, the neuron
daemon and its worker, so a name one side takes is never refused by the other."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BeforeValidator

# Every harness name a config or load request may use -> the harness that serves it.
HARNESSES = {"torch": "torch", "candle": "torch", "llamacpp": "llamacpp"}
TORCH_QUANTS = ("bf16", "fp16", "fp32")
_QUANT_SYNONYMS = {
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "f16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "fp32": "fp32",
    "f32": "fp32",
    "float32": "fp32",
    "float": "fp32",
}
# Catalogue quant strings torch will take once torchao lands (int8/int4) or never (k-quants).
_LATER_QUANTS = {"q4k", "q5k", "q6k", "q8_0", "int8", "int4"}
# GGUF tensor types (Q4_K_M, Q8_0, IQ2_XS, F16, ...): llama.cpp's quants.
_GGUF_TYPE = re.compile(
    r"^(?:I?Q\d(?:_[A-Z0-9]+)*|TQ\d_\d|BF16|F16|F32|F64|MXFP4(?:_MOE)?)$", re.IGNORECASE
)


class QuantRefused(ValueError):
    """A quant the harness cannot serve; the message says what to use instead."""


def effective_harness(name: str | None) -> str:
    """`candle` is `torch`; None is the default harness; unknown names pass through."""
    asked = name or "torch"
    return HARNESSES.get(asked, asked)


def normalise_quant(quant: str | None, harness: str = "torch") -> str | None:
    """The canonical quant for `harness` (None: the device decides); raises QuantRefused."""
    if not quant:
        return None
    name = effective_harness(harness)
    if name == "llamacpp":
        return _gguf_quant(quant)
    if name != "torch":
        return quant
    if quant.lower() in _QUANT_SYNONYMS:
        return _QUANT_SYNONYMS[quant.lower()]
    if quant in _LATER_QUANTS:
        raise QuantRefused(f"quant '{quant}' is not supported by harness 'torch' yet; use 'bf16'")
    if _GGUF_TYPE.match(quant):
        raise QuantRefused(f"quant '{quant}' is a GGUF type; use harness 'llamacpp'")
    raise QuantRefused(f"quant '{quant}' is not supported by harness 'torch'")


def _gguf_quant(quant: str) -> str:
    """A GGUF type name in llama.cpp's spelling (`q4_k_m` → `Q4_K_M`; `fp16` → `F16`). It picks
    the file of a repo; the served quant is the file's own type."""
    q = _TORCH_TO_GGUF.get(quant.lower(), quant).upper().replace("-", "_")
    if _GGUF_TYPE.match(q):
        return q
    raise QuantRefused(
        f"quant '{quant}' is not a GGUF type for harness 'llamacpp' (e.g. Q4_K_M, Q5_K_M, "
        "Q6_K, Q8_0, F16)"
    )


_TORCH_TO_GGUF = {"fp16": "F16", "float16": "F16", "fp32": "F32", "float32": "F32"}


def default_quant(kind: str, compute_capability: str | None) -> str:
    """bf16 on CUDA >= 8.0, fp16 on older CUDA, fp32 on CPU."""
    if kind != "cuda":
        return "fp32"
    try:
        major = int((compute_capability or "0").split(".")[0])
    except ValueError:
        major = 0
    return "bf16" if major >= 8 else "fp16"


COMPILE_MODES = ("auto", "on", "off")


def compile_mode(value: object) -> str:
    """A model's `compile` setting as a mode: the old booleans are on/off, None is auto."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value.lower() in COMPILE_MODES:
        return value.lower()
    raise ValueError(f"compile must be one of {list(COMPILE_MODES)} (or true/false)")


# A `compile` field (catalogue, load request): the mode, from its name or the old boolean.
CompileMode = Annotated[Literal["auto", "on", "off"], BeforeValidator(compile_mode)]
