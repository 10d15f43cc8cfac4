"""The session store: one JSON file per session under `$XDG_DATA_HOME/helexa-acp/sessions/`.

Written whole to a temporary file and renamed over the old one, so a crash mid-write leaves the
previous round, never half a file. A file that doesn't parse is reported, never fatal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from helexa.acp.history import Message, from_json, to_json

log = logging.getLogger("helexa.acp.sessions")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class SessionError(Exception):
    """A stored session can't be read; the message names the file and what is wrong."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class StoredSession:
    session_id: str
    cwd: str
    model_id: str
    mode_id: str
    history: list[Message] = field(default_factory=list)
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "cwd": self.cwd,
            "model_id": self.model_id,
            "mode_id": self.mode_id,
            "history": to_json(self.history),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, d: object) -> StoredSession:
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        strs = ("session_id", "cwd", "model_id", "mode_id", "created_at", "updated_at")
        for key in strs:
            if not isinstance(d.get(key), str):
                raise ValueError(f"{key} must be a string")
        return cls(**{k: d[k] for k in strs}, history=from_json(d.get("history")))

    def title(self) -> str | None:
        """The first user words, for session lists."""
        first = next((m.content for m in self.history if m.role == "user" and m.content), None)
        return None if first is None else " ".join(first.split())[:80]


class SessionStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, session_id: str) -> Path:
        return self.root / f"{_UNSAFE.sub('_', session_id)}.json"

    def save(self, s: StoredSession) -> None:
        """Atomically replace the file (tmp file in the same directory, fsync, rename)."""
        s.updated_at = now_iso()
        self.root.mkdir(parents=True, exist_ok=True)
        data = json.dumps(s.to_dict(), ensure_ascii=False).encode()
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path(s.session_id))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def load(self, session_id: str) -> StoredSession | None:
        """None when there is no such session; SessionError when its file is unreadable."""
        path = self.path(session_id)
        s = self._read(path)
        return s if s is not None and s.session_id == session_id else None

    def list(self, cwd: str | None) -> list[StoredSession]:
        """Sessions of exactly `cwd` (all when None), most recently updated first; unreadable
        files are logged and skipped so one bad file doesn't hide the rest."""
        found: list[StoredSession] = []
        for path in self.root.glob("*.json") if self.root.is_dir() else ():
            if path.name.startswith(".tmp-"):
                continue
            try:
                s = self._read(path)
            except SessionError as e:
                log.warning("%s", e)
                continue
            if s is not None and (cwd is None or s.cwd == cwd):
                found.append(s)
        found.sort(key=lambda s: (s.updated_at, s.session_id), reverse=True)
        return found

    @staticmethod
    def _read(path: Path) -> StoredSession | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SessionError(f"session file {path} can't be read: {e.strerror}") from None
        try:
            return StoredSession.from_dict(json.loads(raw))
        except (ValueError, TypeError) as e:
            raise SessionError(f"session file {path} is corrupt: {e}") from None
