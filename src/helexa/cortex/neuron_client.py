"""Calls from cortex to a neuron's management API, with node auth and one error type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from helexa.cortex.fleet import NodeState


@dataclass(slots=True)
class NeuronCallError(Exception):
    """kind: `unreachable` (connect/transport), `timeout`, `http` (non-2xx) or `bad_json`."""

    kind: str
    status: int | None = None
    code: str | None = None
    detail: str = ""
    payload: Any = None

    def __str__(self) -> str:
        return f"{self.kind} status={self.status} code={self.code} {self.detail[:512]}"


def model_path(model_id: str, suffix: str = "") -> str:
    return f"/models/{quote(model_id, safe='')}{suffix}"


class NeuronClient:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    @staticmethod
    def headers(node: NodeState) -> dict[str, str]:
        return {"authorization": f"Bearer {node.token}"} if node.token else {}

    async def call(
        self,
        node: NodeState,
        method: str,
        path: str,
        timeout: float,
        body: dict[str, Any] | None = None,
    ) -> Any:
        """Return the parsed JSON of a 2xx reply; raise NeuronCallError for anything else."""
        headers = self.headers(node)
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["content-type"] = "application/json"
        try:
            async with self.session.request(
                method,
                node.endpoint + path,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError as e:
            raise NeuronCallError("timeout", detail=repr(e)) from None
        except aiohttp.ClientError as e:
            raise NeuronCallError("unreachable", detail=repr(e)) from None
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
            if 200 <= status < 300:
                raise NeuronCallError(
                    "bad_json", status, detail=raw[:512].decode(errors="replace")
                ) from None
        if not 200 <= status < 300:
            code = None
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                code = parsed["error"].get("code")
            raise NeuronCallError(
                "http", status, code, detail=raw[:512].decode(errors="replace"), payload=parsed
            )
        return parsed
