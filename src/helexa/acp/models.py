"""The model menu: `GET {base}/models` of every endpoint at startup, as `endpoint:model` values.

An endpoint that is down or answers nonsense contributes only its `default_model`, with a warning
in the log, so one dead endpoint never keeps the agent from starting.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp

from helexa.acp.config import Config, Endpoint

log = logging.getLogger("helexa.acp.models")
LIST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ModelChoice:
    value: str  # endpoint:model
    endpoint: str
    model: str


def auth_headers(ep: Endpoint) -> dict[str, str]:
    """The endpoint's auth in its own dialect (Anthropic: x-api-key + version; else Bearer)."""
    if ep.wire_api == "anthropic-messages":
        h = {"anthropic-version": "2023-06-01"}
        return h | ({"x-api-key": ep.api_key} if ep.api_key else {})
    return {"Authorization": f"Bearer {ep.api_key}"} if ep.api_key else {}


async def list_models(ep: Endpoint, http: aiohttp.ClientSession) -> list[str]:
    """Model ids the endpoint lists (`{"data": [{"id": ...}]}`), [] when it can't say."""
    url = f"{ep.base_url}/models"
    try:
        async with http.get(url, headers=auth_headers(ep)) as r:
            if r.status != 200:
                log.warning("endpoint '%s': GET %s answered %d", ep.name, url, r.status)
                return []
            body = await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as e:
        log.warning("endpoint '%s': GET %s failed: %s", ep.name, url, e or type(e).__name__)
        return []
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        log.warning("endpoint '%s': GET %s has no data list", ep.name, url)
        return []
    return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]


async def discover(cfg: Config) -> list[ModelChoice]:
    """Every endpoint's models (its default first), in config order."""
    timeout = aiohttp.ClientTimeout(total=LIST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        listed = await asyncio.gather(*(list_models(ep, http) for ep in cfg.endpoints))
    choices: list[ModelChoice] = []
    for ep, ids in zip(cfg.endpoints, listed, strict=True):
        ordered = ([ep.default_model] if ep.default_model else []) + ids
        for model in dict.fromkeys(ordered):
            choices.append(ModelChoice(f"{ep.name}:{model}", ep.name, model))
    log.info("models: %s", ", ".join(c.value for c in choices) or "(none)")
    return choices
