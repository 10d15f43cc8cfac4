"""The SQLite store (issue 6): schema + migrations, WAL, read shapes, medians."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from bench_data import run, seed

from helexa.bench.store import _DDL_V1, SCHEMA_VERSION, Store, StoreError


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "db" / "bench.sqlite")
    seed(s)
    return s


def columns(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[1] for r in conn.execute("PRAGMA table_info(runs)")]


def test_fresh_db_schema_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "new" / "bench.sqlite"
    s = Store(path)
    assert s.schema_version() == SCHEMA_VERSION == 2
    assert s.journal_mode() == "wal"
    cols = columns(path)
    assert cols[:2] == ["id", "ts"] and cols[-1] == "extra" and "build_info" in cols
    with sqlite3.connect(path) as conn:
        idx = {r[1] for r in conn.execute("PRAGMA index_list(runs)")}
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    assert {"runs_cell", "runs_ts"} <= idx
    assert meta == {"schema_version": "2"}
    s.close()
    # reopening is a no-op
    assert Store(path).schema_version() == 2


def test_migrates_a_v1_file(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(_DDL_V1)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute(
            "INSERT INTO runs (ts, host, git_sha, package_version, build_info, bench_sha, "
            "model_id, harness, scenario_id, prompt_size_approx, max_tokens, ok, ttft_s) "
            "VALUES ('2025-12-01T00:00:00Z', 'old', 'c0ffee0', '0.0.9', '{}', 'b', 'm0', "
            "'hf', 'chat:128', 128, 256, 1, 0.4)"
        )
    assert "extra" not in columns(path)
    s = Store(path)
    assert s.schema_version() == 2
    assert "extra" in columns(path)
    [old] = s.runs({"host": "old"})
    assert old["extra"] is None and old["ttft_s"] == 0.4 and old["ok"] is True
    s.add_run(run(host="old", extra={"load_s": 1.5}, scenario_id="cold_load"))
    assert s.runs({"scenario": "cold_load"})[0]["extra"] == {"load_s": 1.5}


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer"):
        Store(path)


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError):
        Store(path)


def test_cell_counts(store: Store) -> None:
    assert store.cell_counts("alpha", "aaa1111", "m1", "chat:128") == (3, 1)
    assert store.cell_counts("alpha", "bbb2222", "m1", "chat:128") == (2, 1)
    assert store.cell_counts("alpha", "zzz", "m1", "chat:128") == (0, 0)


def test_error_truncated_and_failures_kept(store: Store) -> None:
    failed = store.runs({"ok": False})
    assert len(failed) == 2
    assert all(r["ok"] is False for r in failed)
    assert len(failed[0]["error"]) == 500


def test_summary_medians_on_newest_build(store: Store) -> None:
    assert store.summary() == [
        {
            "target_name": "alpha",
            "model_id": "m1",
            "scenario_id": "chat:128",
            "prompt_size_approx": 128,
            "git_sha": "bbb2222",
            "prompt_tokens": 130,
            "ttft_s_median": pytest.approx(0.6),
            "decode_tps_median": pytest.approx(60.0),
            "total_s_median": pytest.approx(3.0),
            "samples": 2,
            "gpu": "2× RTX 5090",
        },
        {
            "target_name": "alpha",
            "model_id": "m1",
            "scenario_id": "concurrency:4",
            "prompt_size_approx": 128,
            "git_sha": "bbb2222",
            "prompt_tokens": 130,
            "ttft_s_median": 0.9,
            "decode_tps_median": 200.0,
            "total_s_median": 5.0,
            "samples": 1,
            "gpu": "2× RTX 5090",
        },
        {
            "target_name": "beta",
            "model_id": "m1",
            "scenario_id": "chat:128",
            "prompt_size_approx": 128,
            "git_sha": "llama-b1",
            "prompt_tokens": 130,
            "ttft_s_median": 0.25,
            "decode_tps_median": 30.0,
            "total_s_median": 4.0,
            "samples": 1,
            "gpu": "CPU",
        },
    ]


def test_summary_cell_with_only_failures(tmp_path: Path) -> None:
    s = Store(tmp_path / "f.sqlite")
    s.add_run(run(ok=False, error="timeout", ttft_s=None))
    [row] = s.summary()
    assert row["samples"] == 0
    assert row["ttft_s_median"] is None and row["decode_tps_median"] is None
    assert row["prompt_tokens"] is None


def test_series(store: Store) -> None:
    keys = {
        "git_sha",
        "build_timestamp",
        "package_version",
        "ttft_s_median",
        "decode_tps_median",
        "total_s_median",
        "samples",
    }
    alpha = store.series("m1", "chat:128", "alpha")
    assert [set(r) for r in alpha] == [keys, keys]
    assert [r["git_sha"] for r in alpha] == ["aaa1111", "bbb2222"]  # oldest build first
    assert alpha[0]["ttft_s_median"] == pytest.approx(0.2)  # the failed 9.0 is ignored
    assert alpha[0]["samples"] == 3
    assert alpha[1]["package_version"] == "0.2.0"
    assert alpha[1]["decode_tps_median"] == pytest.approx(60.0)
    # no host: the host with the latest run of the model (beta ran last)
    assert [r["git_sha"] for r in store.series("m1", "chat:128")] == ["llama-b1"]
    assert store.series("nope", "chat:128") == []


def test_runs_filters_and_order(store: Store) -> None:
    rows = store.runs()
    assert len(rows) == 9
    assert [r["ts"] for r in rows] == sorted((r["ts"] for r in rows), reverse=True)
    assert "build_info" not in rows[0]
    assert isinstance(rows[0]["ok"], bool)
    assert {r["host"] for r in store.runs({"host": "beta"})} == {"beta"}
    assert len(store.runs({"sha": "aaa1111", "ok": True})) == 3
    assert len(store.runs({"model": "m1", "scenario": "concurrency:4"})) == 1
    assert store.runs({"scenario": "concurrency:4"})[0]["extra"]["ttft_p99"] == 1.4
    assert len(store.runs(limit=2)) == 2
    with pytest.raises(ValueError):
        store.runs({"bogus": 1})


def test_dimensions_and_health(store: Store) -> None:
    assert store.dimensions() == {
        "hosts": ["alpha", "beta"],
        "models": ["m1"],
        "scenarios": ["chat:128", "concurrency:4"],
        "builds": [
            {
                "git_sha": "aaa1111",
                "build_timestamp": "2026-01-01T00:00:00Z",
                "package_version": "0.1.0",
            },
            {
                "git_sha": "bbb2222",
                "build_timestamp": "2026-01-02T00:00:00Z",
                "package_version": "0.2.0",
            },
            {"git_sha": "llama-b1", "build_timestamp": None, "package_version": "llama-b1"},
        ],
        "host_gpus": {"alpha": "2× RTX 5090", "beta": "CPU"},
        "model_gpus": {"m1": "CPU"},
    }
    assert store.health() == {"status": "ok", "runs": 9, "last_run_ts": "2026-01-03T00:00:01Z"}


def test_empty_store(tmp_path: Path) -> None:
    s = Store(tmp_path / "e.sqlite")
    assert s.health() == {"status": "ok", "runs": 0, "last_run_ts": None}
    assert s.summary() == [] and s.runs() == []
    assert s.dimensions()["builds"] == []


def test_writer_and_readers_in_threads(tmp_path: Path) -> None:
    """The sweep writes from one thread while API readers run in others: nothing locks."""
    s = Store(tmp_path / "t.sqlite")
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for i in range(150):
                s.add_run(run(ts=f"2026-02-01T00:{i // 60:02d}:{i % 60:02d}Z", ttft_s=i / 100))
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    def reader() -> None:
        try:
            while not done.is_set():
                s.summary()
                s.runs(limit=50)
                s.health()
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=writer),
        *(threading.Thread(target=reader) for _ in range(4)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert s.health()["runs"] == 150
    s.close()
