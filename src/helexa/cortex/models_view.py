"""`GET /v1/models`: the fleet catalogue as clients see it."""

from __future__ import annotations

import logging
import time
from typing import Any

from helexa.config.catalogue import Catalogue
from helexa.cortex.fleet import FAILED_VIEW, Fleet
from helexa.cortex.placement import is_feasible_on

log = logging.getLogger("helexa.cortex.models")


def _entry(model_id: str, created: int) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "helexa",
        "loaded": False,
        "feasible_on": [],
        "locations": [],
        "capabilities": [],
        "tool_call": False,
        "reasoning": False,
    }


def _new(
    entries: dict[str, dict[str, Any]], caps: dict[str, set[str]], mid: str, created: int
) -> dict[str, Any]:
    caps[mid] = set()
    e = entries[mid] = _entry(mid, created)
    return e


def _merge_limit(current: dict[str, int] | None, new: dict[str, int]) -> dict[str, int]:
    """The smallest context wins; a present limit beats an absent one."""
    if current is None or new["context"] < current["context"]:
        return new
    return current


def _effective(e: dict[str, Any]) -> None:
    """Top-level harness and quant: a loaded location's (the effective ones), else the
    catalogue's (asked); a key is left out when neither says."""
    served = next((loc for loc in e["locations"] if loc["status"] == "loaded"), None)
    for key in ("harness", "quant"):
        value = (served or {}).get(key) or e.get(key)
        if value is None:
            e.pop(key, None)
        else:
            e[key] = value


def build_models(fleet: Fleet, catalogue: Catalogue) -> dict[str, Any]:
    created = int(time.time())
    entries: dict[str, dict[str, Any]] = {}
    caps: dict[str, set[str]] = {}
    for prof in catalogue.models:
        e = entries[prof.id] = _entry(prof.id, created)
        e["feasible_on"] = sorted(
            n.name
            for n in fleet
            if n.healthy
            and n.discovery is not None
            and is_feasible_on(prof, n.name, n.discovery.devices)
        )
        caps[prof.id] = set(prof.capabilities)
        if prof.cost is not None:
            e["cost"] = prof.cost.as_wire()
        e["harness"], e["quant"] = prof.harness, prof.quant
    for node in fleet:
        for mid, m in node.models.items():
            e = entries.get(mid) or _new(entries, caps, mid, created)
            loc: dict[str, Any] = {
                "node": node.name,
                "status": m.status,
                "vram_used_mb": m.vram_used_mb,
                "healthy": node.healthy,
            }
            if m.quant is not None:  # what the node serves (a GGUF: the file's own type)
                loc["harness"], loc["quant"] = m.harness, m.quant
            if m.status == "failed":
                loc["error"] = FAILED_VIEW  # the neuron's text stays in logs and /api/fleet
            e["locations"].append(loc)
            caps[mid].update(m.capabilities)
            e["tool_call"] = e["tool_call"] or m.tool_call
            e["reasoning"] = e["reasoning"] or m.reasoning
            if m.limit is not None:
                lim = m.limit.model_dump(exclude_none=True)
                e["limit"] = _merge_limit(e.get("limit"), lim)
        for mid in node.activation_loading():
            if mid in node.models:
                continue
            e = entries.get(mid) or _new(entries, caps, mid, created)
            e["locations"].append(
                {
                    "node": node.name,
                    "status": "loading",
                    "vram_used_mb": None,
                    "healthy": node.healthy,
                }
            )
    for mid, e in entries.items():
        e["locations"].sort(key=lambda loc: loc["node"])
        e["loaded"] = any(loc["status"] == "loaded" and loc["healthy"] for loc in e["locations"])
        _effective(e)
        e["capabilities"] = sorted(caps[mid])
    for alias, target in catalogue.aliases.items():
        if target in entries and alias not in entries:
            copy = dict(entries[target])
            copy["id"] = alias
            copy["alias_of"] = target
            entries[alias] = copy
    return {"object": "list", "data": [entries[k] for k in sorted(entries)]}


def model_entry(fleet: Fleet, catalogue: Catalogue, model_id: str) -> dict[str, Any] | None:
    """`GET /v1/models/{id}`: the same entry `/v1/models` lists, aliases included."""
    return next((e for e in build_models(fleet, catalogue)["data"] if e["id"] == model_id), None)


def warn_dangling_aliases(catalogue: Catalogue) -> None:
    known = {m.id for m in catalogue.models}
    for alias, target in catalogue.aliases.items():
        if target not in known:
            log.warning(
                "alias '%s' points at '%s', which is not in the catalogue; it is listed in "
                "/v1/models only while a neuron reports the target",
                alias,
                target,
            )
