"""A tiny TOML writer for test configs (the stdlib only reads TOML)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def write_toml(path: Path, tables: Mapping[str, Any]) -> None:
    """Scalars, [table]s (nested) and [[array]]s of tables; keys holding `/` are quoted."""
    lines: list[str] = []

    def emit(prefix: str, obj: Mapping[str, Any]) -> None:
        for k, v in obj.items():
            if not _is_table(v):
                lines.append(f'"{k}" = {toml_value(v)}' if "/" in k else f"{k} = {toml_value(v)}")
        for k, v in obj.items():
            if isinstance(v, dict) and _is_table(v):
                lines.append(f"\n[{prefix}{k}]")
                emit(f"{prefix}{k}.", v)
            elif isinstance(v, list) and _is_table(v):
                for item in v:
                    lines.append(f"\n[[{prefix}{k}]]")
                    emit(f"{prefix}{k}.", item)

    emit("", tables)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _is_table(v: Any) -> bool:
    if isinstance(v, dict):
        return True
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)
