"""The key/value metadata at the head of a GGUF file (architecture, sizes, tokenizer, chat
template), read without loading tensors and without llama.cpp or numpy: the daemon's
tokenizer, quant and memory estimate come from here. Format: github.com/ggml-org/ggml
docs/gguf.md (version 2 and 3, little-endian)."""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

MAGIC = b"GGUF"
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_MAX_STRING = 64 * 2**20
_MAX_ITEMS = 16 * 2**20

# llama.cpp's `general.file_type` (enum llama_ftype) → the quant name a user writes.
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}


class GgufError(ValueError):
    """Not a GGUF file, or one whose header is damaged."""


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Every metadata key → its value (arrays as lists). Cached per (path, size, mtime)."""
    st = os.stat(path)
    return dict(_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=4)  # a 150k-token vocabulary is tens of MB as Python objects
def _cached(path: str, size: int, mtime: int) -> dict[str, Any]:
    with open(path, "rb", buffering=1 << 20) as f:
        return _read(f, path)


def _read(f: IO[bytes], label: str) -> dict[str, Any]:
    if f.read(4) != MAGIC:
        raise GgufError(f"{label} is not a GGUF file")
    (version,) = struct.unpack("<I", _exact(f, 4, label))
    if version not in (2, 3):
        raise GgufError(f"{label}: GGUF version {version} is not supported")
    _n_tensors, n_kv = struct.unpack("<QQ", _exact(f, 16, label))
    if n_kv > 1_000_000:
        raise GgufError(f"{label}: implausible metadata count {n_kv}")
    out: dict[str, Any] = {}
    for _ in range(n_kv):
        key = _string(f, label)
        (vtype,) = struct.unpack("<I", _exact(f, 4, label))
        out[key] = _value(f, vtype, label)
    return out


def header_bytes(f: IO[bytes], label: str) -> bytes:
    """The bytes of a GGUF file up to the end of its metadata: a file of them reads back with
    `read_metadata` (tokenizer, template, sizes) without the tensors."""
    _read(f, label)
    end = f.tell()
    f.seek(0)
    return _exact(f, end, label)


def _exact(f: IO[bytes], n: int, label: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise GgufError(f"{label}: GGUF header is truncated")
    return data


def _string(f: IO[bytes], label: str) -> str:
    (n,) = struct.unpack("<Q", _exact(f, 8, label))
    if n > _MAX_STRING:
        raise GgufError(f"{label}: implausible string length {n}")
    return _exact(f, n, label).decode("utf-8", errors="replace")


def _value(f: IO[bytes], vtype: int, label: str) -> Any:
    if vtype == _STRING:
        return _string(f, label)
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, _exact(f, struct.calcsize(fmt), label))[0]
    if vtype == _ARRAY:
        itype, n = struct.unpack("<IQ", _exact(f, 12, label))
        if n > _MAX_ITEMS:
            raise GgufError(f"{label}: implausible array length {n}")
        if itype in _SCALARS:  # one read for the whole array
            fmt = _SCALARS[itype]
            return list(struct.unpack(f"<{n}{fmt[1]}", _exact(f, n * struct.calcsize(fmt), label)))
        read: Callable[[], Any] = lambda: _value(f, itype, label)  # noqa: E731
        return [read() for _ in range(n)]
    raise GgufError(f"{label}: unknown GGUF value type {vtype}")


def arch_key(meta: dict[str, Any], name: str, default: Any = None) -> Any:
    """`{general.architecture}.{name}`, e.g. arch_key(meta, "block_count")."""
    return meta.get(f"{meta.get('general.architecture', '')}.{name}", default)


def file_quant(meta: dict[str, Any]) -> str | None:
    """The file's quant name (`Q4_K_M`, `F16`, …) from general.file_type, if known."""
    ft = meta.get("general.file_type")
    return FILE_TYPES.get(ft) if isinstance(ft, int) else None


def gguf_file_quant(path: str | os.PathLike[str]) -> str | None:
    """The quant a GGUF file is served as (its `general.file_type`)."""
    return file_quant(read_metadata(path))
