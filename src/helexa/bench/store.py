"""helexa-bench's SQLite store: versioned schema, WAL, one connection per thread.

The sweep writes from a worker thread while the API reads from others; WAL plus a connection per
thread lets readers never block the writer and never see "database is locked".
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import statistics
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2

_DDL_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  id                   INTEGER PRIMARY KEY AUTOINCREMENT,
  ts                   TEXT    NOT NULL,
  host                 TEXT    NOT NULL,
  hostname             TEXT,
  gpu                  TEXT,
  git_sha              TEXT    NOT NULL,
  git_sha_long         TEXT,
  git_dirty            INTEGER NOT NULL DEFAULT 0,
  build_timestamp      TEXT,
  package_version      TEXT    NOT NULL,
  build_info           TEXT    NOT NULL,
  bench_sha            TEXT    NOT NULL,
  model_id             TEXT    NOT NULL,
  harness              TEXT    NOT NULL,
  quant                TEXT,
  scenario_id          TEXT    NOT NULL,
  prompt_size_approx   INTEGER NOT NULL,
  prompt_tokens_actual INTEGER,
  max_tokens           INTEGER NOT NULL,
  ttft_s               REAL,
  decode_tps           REAL,
  total_s              REAL,
  completion_tokens    INTEGER,
  ok                   INTEGER NOT NULL,
  error                TEXT
);
CREATE INDEX IF NOT EXISTS runs_cell ON runs(host, model_id, scenario_id, git_sha);
CREATE INDEX IF NOT EXISTS runs_ts   ON runs(ts);
"""

# Each entry takes the schema from version i+1 to i+2; appended, never edited.
_MIGRATIONS: tuple[str, ...] = ("ALTER TABLE runs ADD COLUMN extra TEXT",)

ERROR_MAX = 500


class StoreError(Exception):
    """The database can't be used as is (newer schema, unreadable file)."""


@dataclass(kw_only=True, slots=True)
class RunRow:
    """One benchmark run: the `runs` columns, plus `extra` (scenario-specific metrics)."""

    ts: str
    host: str
    git_sha: str
    package_version: str
    build_info: str | dict[str, Any]
    bench_sha: str
    model_id: str
    harness: str
    scenario_id: str
    prompt_size_approx: int
    max_tokens: int
    ok: bool
    hostname: str | None = None
    gpu: str | None = None
    git_sha_long: str | None = None
    git_dirty: bool = False
    build_timestamp: str | None = None
    quant: str | None = None
    prompt_tokens_actual: int | None = None
    ttft_s: float | None = None
    decode_tps: float | None = None
    total_s: float | None = None
    completion_tokens: int | None = None
    error: str | None = None
    extra: dict[str, Any] | None = None
    id: int | None = None


_COLUMNS = [f.name for f in dataclasses.fields(RunRow) if f.name != "id"]
_API_COLUMNS = ["id", *[c for c in _COLUMNS if c != "build_info"]]

RUN_FILTERS = {"host": "host", "model": "model_id", "scenario": "scenario_id", "sha": "git_sha"}
MAX_LIMIT = 1000
DEFAULT_LIMIT = 200


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


class Store:
    """The run store. Safe to share between threads: each thread gets its own connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._migrate()

    # -- connections -------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(
                    self.path, timeout=30, isolation_level=None, check_same_thread=False
                )
            except sqlite3.Error as e:
                raise StoreError(f"{self.path}: cannot open: {e}") from e
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()

    # -- schema ------------------------------------------------------------------------------

    def _migrate(self) -> None:
        """Create v1 if empty, then apply each pending migration in its own transaction."""
        try:
            conn = self._conn()
            conn.executescript(_DDL_V1)
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '1')")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: not a usable SQLite database: {e}") from e
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this helexa-bench "
                f"understands ({SCHEMA_VERSION}); upgrade helexa-bench"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._tx() as tx:
                tx.execute(_MIGRATIONS[target - 2])
                tx.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(target),))

    def schema_version(self) -> int:
        row = self._conn().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def journal_mode(self) -> str:
        return str(self._conn().execute("PRAGMA journal_mode").fetchone()[0])

    # -- writes ------------------------------------------------------------------------------

    def add_run(self, row: RunRow) -> int:
        """Store one run (failed ones too: a failure is a result). Returns its id."""
        values = dataclasses.asdict(row)
        if not isinstance(values["build_info"], str):
            values["build_info"] = json.dumps(values["build_info"], sort_keys=True)
        values["extra"] = None if row.extra is None else json.dumps(row.extra, sort_keys=True)
        values["ok"] = int(bool(row.ok))
        values["git_dirty"] = int(bool(row.git_dirty))
        if values["error"] is not None:
            values["error"] = str(values["error"])[:ERROR_MAX]
        cols = ", ".join(_COLUMNS)
        marks = ", ".join(f":{c}" for c in _COLUMNS)
        with self._tx() as conn:
            cur = conn.execute(f"INSERT INTO runs ({cols}) VALUES ({marks})", values)
        return int(cur.lastrowid or 0)

    # -- reads -------------------------------------------------------------------------------

    def cell_counts(
        self, host: str, git_sha: str, model_id: str, scenario_id: str
    ) -> tuple[int, int]:
        """(ok, failed) runs in one cell, so the sweep knows whether it is complete."""
        row = (
            self._conn()
            .execute(
                "SELECT COALESCE(SUM(ok = 1), 0), COALESCE(SUM(ok = 0), 0) FROM runs "
                "WHERE host = ? AND git_sha = ? AND model_id = ? AND scenario_id = ?",
                (host, git_sha, model_id, scenario_id),
            )
            .fetchone()
        )
        return int(row[0]), int(row[1])

    def health(self) -> dict[str, Any]:
        row = self._conn().execute("SELECT COUNT(*), MAX(ts) FROM runs").fetchone()
        return {"status": "ok", "runs": int(row[0]), "last_run_ts": row[1]}

    def dimensions(self) -> dict[str, Any]:
        conn = self._conn()

        def distinct(col: str) -> list[str]:
            q = f"SELECT DISTINCT {col} FROM runs ORDER BY {col}"
            return [r[0] for r in conn.execute(q)]

        builds = [
            {"git_sha": r[0], "build_timestamp": r[1], "package_version": r[2]}
            for r in conn.execute(
                "SELECT git_sha, MAX(build_timestamp), MAX(package_version) FROM runs "
                "GROUP BY git_sha ORDER BY MIN(ts)"
            )
        ]
        return {
            "hosts": distinct("host"),
            "models": distinct("model_id"),
            "scenarios": distinct("scenario_id"),
            "builds": builds,
            "host_gpus": self._latest_gpu("host"),
            "model_gpus": self._latest_gpu("model_id"),
        }

    def _latest_gpu(self, col: str) -> dict[str, str]:
        """The GPU label of the newest run per host (or model): hardware can change."""
        out: dict[str, str] = {}
        q = f"SELECT {col}, gpu FROM runs WHERE gpu IS NOT NULL ORDER BY ts, id"
        for key, gpu in self._conn().execute(q):
            out[key] = gpu
        return out

    def summary(self) -> list[dict[str, Any]]:
        """Medians on the newest build per (host, model, scenario); the newest build is the one
        whose latest run is the most recent."""
        conn = self._conn()
        cells = conn.execute(
            "SELECT host, model_id, scenario_id, git_sha, MAX(ts) AS last FROM runs "
            "GROUP BY host, model_id, scenario_id, git_sha ORDER BY host, model_id, scenario_id"
        ).fetchall()
        newest: dict[tuple[str, str, str], tuple[str, str]] = {}
        for c in cells:
            key = (c["host"], c["model_id"], c["scenario_id"])
            if key not in newest or c["last"] > newest[key][1]:
                newest[key] = (c["git_sha"], c["last"])
        gpus = self._latest_gpu("host")
        out = []
        for (host, model, scenario), (sha, _) in sorted(newest.items()):
            rows = conn.execute(
                "SELECT prompt_size_approx, prompt_tokens_actual, ttft_s, decode_tps, total_s, ok"
                " FROM runs WHERE host = ? AND model_id = ? AND scenario_id = ? AND git_sha = ?"
                " ORDER BY ts, id",
                (host, model, scenario, sha),
            ).fetchall()
            stats = _medians([r for r in rows if r["ok"]])
            prompt = _median(
                [
                    r["prompt_tokens_actual"]
                    for r in rows
                    if r["ok"] and r["prompt_tokens_actual"] is not None
                ]
            )
            out.append(
                {
                    "target_name": host,
                    "model_id": model,
                    "scenario_id": scenario,
                    "prompt_size_approx": rows[-1]["prompt_size_approx"],
                    "git_sha": sha,
                    "prompt_tokens": None if prompt is None else round(prompt),
                    **stats,
                    "gpu": gpus.get(host),
                }
            )
        return out

    def series(self, model: str, scenario: str, host: str | None = None) -> list[dict[str, Any]]:
        """Per-build medians for one cell, oldest build first (by its first run)."""
        conn = self._conn()
        if host is None:
            row = conn.execute(
                "SELECT host FROM runs WHERE model_id = ? ORDER BY ts DESC, id DESC LIMIT 1",
                (model,),
            ).fetchone()
            if row is None:
                return []
            host = str(row[0])
        rows = conn.execute(
            "SELECT git_sha, build_timestamp, package_version, ttft_s, decode_tps, total_s, ok, ts"
            " FROM runs WHERE host = ? AND model_id = ? AND scenario_id = ? ORDER BY ts, id",
            (host, model, scenario),
        ).fetchall()
        builds: dict[str, list[sqlite3.Row]] = {}
        for r in rows:
            builds.setdefault(r["git_sha"], []).append(r)
        out = []
        for sha, group in builds.items():
            last = group[-1]
            out.append(
                {
                    "git_sha": sha,
                    "build_timestamp": last["build_timestamp"],
                    "package_version": last["package_version"],
                    **_medians([r for r in group if r["ok"]]),
                }
            )
        return out

    def runs(
        self, filters: Mapping[str, Any] | None = None, limit: int = DEFAULT_LIMIT
    ) -> list[dict[str, Any]]:
        """Raw runs, newest first. `filters` keys: host, model, scenario, sha (str), ok (bool)."""
        where, args = [], []
        for key, value in (filters or {}).items():
            if value is None:
                continue
            if key == "ok":
                where.append("ok = ?")
                args.append(int(bool(value)))
            elif key in RUN_FILTERS:
                where.append(f"{RUN_FILTERS[key]} = ?")
                args.append(value)
            else:
                raise ValueError(f"unknown filter '{key}'")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        limit = max(1, min(int(limit), MAX_LIMIT))
        q = f"SELECT {', '.join(_API_COLUMNS)} FROM runs{clause} ORDER BY ts DESC, id DESC LIMIT ?"
        out = []
        for r in self._conn().execute(q, [*args, limit]):
            d = dict(r)
            d["ok"] = bool(d["ok"])
            d["extra"] = None if d["extra"] is None else json.loads(d["extra"])
            out.append(d)
        return out


def _medians(ok_rows: list[sqlite3.Row]) -> dict[str, Any]:
    def med(col: str) -> float | None:
        return _median([r[col] for r in ok_rows if r[col] is not None])

    return {
        "ttft_s_median": med("ttft_s"),
        "decode_tps_median": med("decode_tps"),
        "total_s_median": med("total_s"),
        "samples": len(ok_rows),
    }
