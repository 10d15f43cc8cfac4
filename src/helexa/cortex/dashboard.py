"""`GET /dashboard`: one self-contained page that polls `/api/fleet` and `/api/history`.

The page is public (it holds no data; its API calls carry the key), so its safety rests on a
strict Content-Security-Policy: nothing loads from anywhere but this origin, and only the page's
own inline script and style run, pinned by their SHA-256 hashes computed once at import.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from aiohttp import web

PAGE = files("helexa.cortex").joinpath("static/dashboard.html").read_bytes()


def _hashes(tag: str) -> str:
    """CSP source expressions for every inline `<tag>` element's exact text."""
    bodies = re.findall(rb"<" + tag.encode() + rb">(.*?)</" + tag.encode() + rb">", PAGE, re.S)
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'" for b in bodies
    )


CSP = "; ".join(
    (
        "default-src 'self'",
        f"script-src {_hashes('script')}",
        f"style-src {_hashes('style')}",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


async def page(_: web.Request) -> web.Response:
    return web.Response(body=PAGE, content_type="text/html", charset="utf-8", headers=HEADERS)
