"""The session store: §4's file shape, atomic writes, list by cwd newest first, corrupt files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helexa.acp.history import Message, ToolCall
from helexa.acp.sessions import SessionError, SessionStore, StoredSession


def session(sid: str, cwd: str = "/proj") -> StoredSession:
    history = [
        Message("system", "be brief"),
        Message("user", "fix   the\nbug"),
        Message(
            "assistant",
            "",
            reasoning="hmm",
            tool_calls=[ToolCall("c1", "read_file", '{"path":"a"}')],
        ),
        Message("tool", "text", tool_call_id="c1", name="read_file"),
    ]
    return StoredSession(sid, cwd, "default:m", "default", history)


def test_a_saved_session_has_the_contract_fields_and_loads_back(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    s = session("s1")
    store.save(s)
    raw = json.loads((tmp_path / "s1.json").read_text())
    assert set(raw) == {
        "session_id",
        "cwd",
        "model_id",
        "mode_id",
        "history",
        "created_at",
        "updated_at",
    }
    back = store.load("s1")
    assert back is not None and back.history == s.history and back.model_id == "default:m"
    assert back.title() == "fix the bug"
    assert [p.name for p in tmp_path.iterdir()] == ["s1.json"]  # no temporary file left


def test_unknown_and_unsafe_ids(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    assert store.load("nope") is None
    assert store.path("../../etc/passwd").parent == tmp_path
    store.save(session("a/b"))
    assert store.load("a_b") is None  # same file name, different session: not this one
    assert store.load("a/b") is not None


def test_a_failed_write_keeps_the_previous_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SessionStore(tmp_path)
    s = session("s1")
    store.save(s)
    before = (tmp_path / "s1.json").read_bytes()
    s.history.append(Message("user", "more"))

    def broken(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        store.save(s)
    assert (tmp_path / "s1.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s1.json"]


def test_list_filters_by_exact_cwd_newest_first(tmp_path: Path) -> None:
    store = SessionStore(tmp_path)
    for sid, cwd in [("old", "/proj"), ("other", "/proj/sub"), ("new", "/proj")]:
        store.save(session(sid, cwd))
    assert [s.session_id for s in store.list("/proj")] == ["new", "old"]
    assert [s.session_id for s in store.list("/proj/sub")] == ["other"]
    assert len(store.list(None)) == 3


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{not json", "is corrupt"),
        (b'{"session_id": "s1"}', "cwd must be a string"),
        (
            b'{"session_id":"s1","cwd":"/p","model_id":"m","mode_id":"default",'
            b'"created_at":"t","updated_at":"t","history":[{"role":"wizard"}]}',
            r"history\[0\].role",
        ),
    ],
)
def test_a_corrupt_file_is_a_clear_error_and_skipped_by_list(
    tmp_path: Path, content: bytes, why: str
) -> None:
    store = SessionStore(tmp_path)
    store.save(session("good"))
    (tmp_path / "s1.json").write_bytes(content)
    with pytest.raises(SessionError, match=why) as e:
        store.load("s1")
    assert "s1.json" in str(e.value)
    assert [s.session_id for s in store.list("/proj")] == ["good"]
