"""Logging setup shared by the CLIs: human lines by default, JSON lines for log shippers."""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class EscapeControl(logging.Filter):
    """Ids in log lines come from clients: a control character could forge or hide a line, so
    every one is written as `\\xNN` (tracebacks are formatted apart and stay multi-line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if CONTROL.search(msg):
            record.msg, record.args = CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", msg), None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(EscapeControl())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
