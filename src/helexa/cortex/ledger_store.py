"""The per-key ledger on disk (SQLite, WAL), so a restart or a kill -9 resets no budget.

Settlements only mark a key dirty (a dict assignment under a lock, on the event loop); a writer
thread commits the dirty keys once every FLUSH_SECS. A kill -9 loses at most the settlements
of the last FLUSH_SECS that were not yet committed; a committed WAL transaction survives the
process dying (synchronous=NORMAL only risks it on power loss or an OS crash).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("helexa.cortex.ledger")

FLUSH_SECS = 1.0
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ledger ("
    "key_id TEXT PRIMARY KEY, spent INTEGER NOT NULL, window_start REAL)"
)
_UPSERT = (
    "INSERT INTO ledger (key_id, spent, window_start) VALUES (?, ?, ?) "
    "ON CONFLICT(key_id) DO UPDATE SET spent = excluded.spent, "
    "window_start = excluded.window_start"
)

Row = tuple[int, float | None]  # (spent, window_start as wall-clock seconds)


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(_SCHEMA)
    return db


class LedgerStore:
    """Loads the ledger once, then writes it behind the gateway's back from its own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        db = _connect(path)
        try:
            rows = db.execute("SELECT key_id, spent, window_start FROM ledger").fetchall()
        finally:
            db.close()
        self.loaded: dict[str, Row] = {k: (int(s), w) for k, s, w in rows}
        self._dirty: dict[str, Row] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def save(self, key_id: str, spent: int, window_start: float | None) -> None:
        with self._lock:
            self._dirty[key_id] = (spent, window_start)

    def _run(self) -> None:
        db = _connect(self.path)
        try:
            while not self._stop.wait(FLUSH_SECS):
                self._flush(db)
            self._flush(db)
        finally:
            db.close()

    def _flush(self, db: sqlite3.Connection) -> None:
        with self._lock:
            batch, self._dirty = self._dirty, {}
        if not batch:
            return
        try:
            with db:
                db.execute("BEGIN")
                db.executemany(_UPSERT, [(k, s, w) for k, (s, w) in batch.items()])
        except sqlite3.Error as e:
            log.error("ledger write to %s failed, retrying next flush: %s", self.path, e)
            with self._lock:
                self._dirty = {**batch, **self._dirty}

    def close(self) -> None:
        """Commit what is dirty and stop the writer (blocks: call it off the event loop)."""
        self._stop.set()
        self._thread.join()
