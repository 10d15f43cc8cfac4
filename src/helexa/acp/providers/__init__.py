"""The three wire APIs helexa-acp speaks, behind one `Provider` protocol."""

from __future__ import annotations

from helexa.acp.providers.anthropic_messages import AnthropicMessages
from helexa.acp.providers.base import TIMEOUT_S, Delta, Done, HttpProvider, Provider, ProviderError
from helexa.acp.providers.openai_chat import OpenAIChat
from helexa.acp.providers.openai_responses import OpenAIResponses

WIRE_APIS: dict[str, type[HttpProvider]] = {
    "openai-chat": OpenAIChat,
    "openai-responses": OpenAIResponses,
    "anthropic-messages": AnthropicMessages,
}


def make_provider(
    wire_api: str, base_url: str, api_key: str | None = None, timeout_s: float = TIMEOUT_S
) -> Provider:
    """The provider for `wire_api` at `base_url` (which includes `/v1`)."""
    cls = WIRE_APIS.get(wire_api)
    if cls is None:
        raise ValueError(f"unknown wire_api '{wire_api}'; one of {', '.join(WIRE_APIS)}")
    return cls(base_url, api_key, timeout_s)


__all__ = ["WIRE_APIS", "Delta", "Done", "Provider", "ProviderError", "make_provider"]
