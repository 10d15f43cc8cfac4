"""Which GGUF file(s) a load means: a local `.gguf` file, a local directory of GGUF files, or a
hub repo where `quant` picks the file (`*{quant}*.gguf`, case-insensitive).

A split model (`name-00001-of-00003.gguf`, …) is one candidate: all its shards are fetched
together and the worker opens the first (llama.cpp finds the rest by name). Zero or several
candidates is `400 ambiguous_gguf` naming them. Blocking I/O; never imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from helexa.wire.errors import ApiError

_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


def is_gguf(name: str | Path) -> bool:
    return str(name).lower().endswith(".gguf")


def gguf_stem(name: str | Path) -> str:
    """The model's name without `.gguf` and without a split suffix."""
    base = PurePosixPath(str(name)).name
    m = _SPLIT.match(base)
    return m["stem"] if m else base[: -len(".gguf")] if is_gguf(base) else base


def group_shards(files: Iterable[str]) -> dict[str, list[str]]:
    """GGUF paths grouped into models: first file (the one to open) → every file of it, in
    order. A split model missing a shard still groups; `check_complete` says so."""
    groups: dict[str, list[str]] = {}
    for f in sorted(f for f in files if is_gguf(f)):
        path = PurePosixPath(f)
        m = _SPLIT.match(path.name)
        key = str(path.parent / m["stem"]) + "\0split" if m else f
        groups.setdefault(key, []).append(f)
    return {members[0]: members for members in groups.values()}


def check_complete(shards: Sequence[str], label: str) -> None:
    """All `-of-N` shards present, numbered 1..N; else 404 naming what is missing."""
    m = _SPLIT.match(PurePosixPath(shards[0]).name)
    if m is None:
        return
    count = int(m["count"])
    have = {int(mm["part"]) for s in shards if (mm := _SPLIT.match(PurePosixPath(s).name))}
    missing = sorted(set(range(1, count + 1)) - have)
    if missing:
        raise ApiError(
            404,
            "model_source_not_found",
            f"model '{label}': split GGUF {shards[0]} is missing part(s) "
            + ", ".join(f"{i:05d}-of-{count:05d}" for i in missing),
        )


def select_gguf(files: Iterable[str], quant: str | None, label: str) -> list[str]:
    """The shards of the one model `quant` picks among `files` (every GGUF when quant is None).

    Matching is on the file name, case-insensitive, and also accepts `-`/`.` for `_` (hub
    names like `Q4-K-M`)."""
    groups = group_shards(files)
    if quant:
        want = _norm(quant)
        groups = {
            first: members
            for first, members in groups.items()
            if want in _norm(PurePosixPath(first).name)
        }
    if len(groups) == 1:
        shards = next(iter(groups.values()))
        check_complete(shards, label)
        return shards
    asked = f"quant '{quant}'" if quant else "no quant"
    if not groups:
        shown = ", ".join(gguf_stem(f) for f in group_shards(files)) or "none"
        raise ambiguous(label, f"no GGUF file matches {asked} (files: {shown})")
    names = ", ".join(sorted(PurePosixPath(f).name for f in groups))
    raise ambiguous(label, f"{len(groups)} GGUF files match {asked}: {names}; set 'quant'")


def ambiguous(label: str, detail: str) -> ApiError:
    return ApiError(400, "ambiguous_gguf", f"model '{label}': {detail}", param="quant")


def _norm(s: str) -> str:
    return s.lower().replace("-", "_").replace(".", "_")


def local_gguf(path: Path, quant: str | None, label: str) -> list[Path]:
    """The shards a local path means: a `.gguf` file (and, when it is a split part, its
    siblings), or the one GGUF in a directory `quant` picks."""
    if path.is_file():
        siblings = [str(p) for p in path.parent.glob("*.gguf")]
        groups = group_shards(siblings)
        for members in groups.values():
            if str(path) in members:
                check_complete(members, label)
                return [Path(m) for m in members]
        return [path]
    files = [str(p.relative_to(path)) for p in path.rglob("*.gguf") if p.is_file()]
    return [path / f for f in select_gguf(files, quant, label)]


def shard_paths(first: Path) -> list[Path]:
    """Every file of the model whose first file is `first` (just `first` unless split)."""
    m = _SPLIT.match(first.name)
    if m is None:
        return [first]
    count = int(m["count"])
    return [
        first.with_name(f"{m['stem']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)
    ]
