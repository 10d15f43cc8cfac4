"""How much memory a model's weights take once loaded: the figure the neuron's 507
pre-check compares with free memory, read from safetensors headers without loading anything.
Never imports torch."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from helexa.neuron.gguf_files import shard_paths

SAFETENSORS_INDEX = "model.safetensors.index.json"

_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
_FLOATS = {"F64", "F32", "F16", "BF16"}
QUANT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file (tensor name → dtype, shape, offsets)."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 2**20:
            raise ValueError(f"{path}: safetensors header of {n} bytes is implausible")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not an object")
    header.pop("__metadata__", None)
    return header


def weight_files(root: Path) -> list[Path]:
    index = root / SAFETENSORS_INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [root / n for n in names if (root / n).is_file()]
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    return sorted(p for p in root.glob("*.safetensors") if p.is_file())


def estimate_weight_bytes(root: Path, quant: str) -> int:
    """Weight bytes once loaded as `quant`: float tensors are rescaled to its width, others
    keep their stored size. Without safetensors, the size of *.bin/*.pt files."""
    width = QUANT_BYTES.get(quant, 2)
    files = weight_files(root)
    if not files:
        return sum(p.stat().st_size for g in ("*.bin", "*.pt") for p in root.glob(g))
    total = 0
    for f in files:
        for info in read_safetensors_header(f).values():
            dtype = info.get("dtype", "")
            start, end = info.get("data_offsets", (0, 0))
            if dtype in _FLOATS:
                total += math.prod(info.get("shape", [])) * width
            else:
                total += end - start
    return total


def estimate_weight_mb(root: str | os.PathLike[str], quant: str) -> int:
    """The 507 pre-check figure: weights at `quant` plus 10 %, in MB (rounded up). A `.gguf`
    file (llamacpp) weighs what its shards weigh; its KV cache is gguf_placement's."""
    path = Path(root)
    if path.suffix.lower() == ".gguf":
        size = sum(p.stat().st_size for p in shard_paths(path) if p.is_file())
    else:
        size = estimate_weight_bytes(path, quant)
    return math.ceil(size * 1.1 / 2**20)
