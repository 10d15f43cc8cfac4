"""A host without torch, for the GGUF-only path: processes started with `without_torch(dir)`
in their PYTHONPATH can't import torch, transformers or safetensors (a `sitecustomize` that
marks them missing), so any import of them on the way fails the test."""

from __future__ import annotations

import os
from pathlib import Path

BLOCKED = ("torch", "transformers", "safetensors")


def without_torch(where: Path) -> str:
    """Write the blocking `sitecustomize.py` into `where`; return the PYTHONPATH to start a
    process with (`where` first, then the current one)."""
    where.mkdir(parents=True, exist_ok=True)
    lines = ["import sys"] + [f"sys.modules[{name!r}] = None" for name in BLOCKED]
    (where / "sitecustomize.py").write_text("\n".join(lines) + "\n")
    return os.pathsep.join(filter(None, [str(where), os.environ.get("PYTHONPATH")]))
