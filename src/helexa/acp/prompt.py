"""A `session/prompt`'s content blocks as one user message.

Text stays text; embedded context (a file the user @-mentioned) is inlined with its URI so the
model sees what it is; a link is named; images travel as data URLs.
"""

from __future__ import annotations

from typing import Any

from acp.schema import (
    EmbeddedResourceContentBlock,
    ImageContentBlock,
    ResourceContentBlock,
    TextContentBlock,
    TextResourceContents,
)

from helexa.acp.history import Message


def user_message(blocks: list[Any]) -> Message:
    parts: list[str] = []
    images: list[str] = []
    for b in blocks:
        if isinstance(b, TextContentBlock):
            parts.append(b.text)
        elif isinstance(b, EmbeddedResourceContentBlock):
            r = b.resource
            if isinstance(r, TextResourceContents):
                parts.append(f'<context uri="{r.uri}">\n{r.text}\n</context>')
            else:
                parts.append(f"(attached binary resource {r.uri} omitted)")
        elif isinstance(b, ResourceContentBlock):
            parts.append(f"[{b.name}]({b.uri})")
        elif isinstance(b, ImageContentBlock):
            images.append(f"data:{b.mime_type};base64,{b.data}")
        # audio: no provider takes it; advertised as unsupported, so clients don't send it
    return Message("user", "\n\n".join(parts), images=images)
