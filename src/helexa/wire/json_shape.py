"""How many JSON values a body holds, measured in a child process.

Parsing holds the GIL from start to end (orjson and json alike), so a thread can't keep the
event loop free while a body of millions of `{}` is parsed: 7.9 MiB stalled it ~200 ms and
cost ~250 MB. Such a body is measured here, in a process of its own, and only a body with a
bounded number of values is parsed where it is served. Imports nothing but orjson, so the
child starts light.
"""

from __future__ import annotations

import orjson


def values(body: bytes) -> tuple[int, str | None]:
    """(every value: objects, arrays, strings, numbers..., None), or (0, the parse error) for a
    body that is not JSON."""
    try:
        stack = [orjson.loads(body)]
    except orjson.JSONDecodeError as e:
        return 0, str(e)
    n = 0
    while stack:
        o = stack.pop()
        n += 1
        if isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return n, None
