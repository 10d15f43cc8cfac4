"""The "models:" part of `helexa up`'s banner: what the user asked for first, then what is ready
to serve, and one line for the catalogue models that are not downloaded (listing each with a
curl line buried the ones the user can actually use)."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from typing import Any

from helexa.wire.advice import get_model_advice


@dataclass(frozen=True)
class Served:
    """One id cortex serves (from its /v1/models, or the catalogue when it doesn't answer)."""

    id: str
    loaded: bool = False
    alias_of: str | None = None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def is_downloaded(mid: str, source: Any, cache_dir: Any) -> bool | None:
    """Whether a hub model's files are in the local cache; None when that can't be told (not
    a Hugging Face model, or no huggingface_hub here)."""
    if source not in (None, "huggingface"):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    if isinstance(cache_dir, str):
        cache_dir = os.path.expanduser(cache_dir)
    try:
        hit = try_to_load_from_cache(mid, "config.json", cache_dir=cache_dir)
    except Exception:
        return None
    return isinstance(hit, str)


def model_lines(
    served: list[Served],
    asked: list[str],
    missing: set[str],
    api_url: str,
    auth_header: str,
) -> list[str]:
    """`missing`: catalogue hub models known not to be downloaded (and not loaded)."""
    offline = hub_offline()
    models = [s for s in served if s.alias_of is None]
    aliases = [s for s in served if s.alias_of is not None]
    rank = {mid: i for i, mid in enumerate(asked)}
    shown = sorted(
        (s for s in models if s.id in rank or s.id not in missing),
        key=lambda s: rank.get(s.id, len(rank)),
    )
    ids = {s.id for s in shown}
    shown += [a for a in aliases if a.alias_of in ids or a.alias_of not in missing]
    hidden = [s for s in models if s.id not in rank and s.id in missing]
    lines = ["models:"]
    for s in shown:
        note = _note(s, s.id in missing, offline)
        lines.append(f"  {s.id}" + (f"   ({note})" if note else ""))
    example = (shown or served or [Served("helexa/small")])[0].id
    body = json.dumps(
        {"model": example, "messages": [{"role": "user", "content": "Hello"}]},
        separators=(",", ":"),
    )
    lines.insert(
        2 if shown else 1,
        f"    curl {api_url}/v1/chat/completions -H 'content-type: application/json'"
        f"{auth_header} -d {shlex.quote(body)}",
    )
    if hidden:
        lines.append("  " + _hidden_line(hidden, aliases, bool(shown), offline))
    return lines


def _note(s: Served, missing: bool, offline: bool) -> str:
    if s.alias_of is not None:
        return f"alias of {s.alias_of}"
    if s.loaded:
        return "loaded"
    if not missing:
        return ""
    if offline:
        return f"not downloaded and HF_HUB_OFFLINE is set: {get_model_advice(s.id)}"
    return "downloading: it loads when the download is done"


def _hidden_line(hidden: list[Served], aliases: list[Served], more: bool, offline: bool) -> str:
    names = []
    for s in hidden:
        mine = [a.id for a in aliases if a.alias_of == s.id]
        names.append(s.id + (f" ({', '.join(mine)})" if mine else ""))
    n = len(hidden)
    head = (
        f"{n}{' more' if more else ''} catalogue model{'s are' if n > 1 else ' is'} not downloaded"
    )
    if offline:
        return (
            f"{head} and HF_HUB_OFFLINE is set: {', '.join(names)}; to use one, "
            f"{get_model_advice(hidden[0].id)}"
        )
    return f"{head} (each downloads on its first request): {', '.join(names)}"
