"""The five tools on a LocalWorkspace in a tmp dir: results, diffs, permission prompts per mode,
and every model mistake (bad JSON, bad arguments, ambiguous edits) as a failed tool result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helexa.acp.events import ToolFinished
from helexa.acp.history import ToolCall
from helexa.acp.paths import plan_dir
from helexa.acp.policy import Policy
from helexa.acp.tools import BASH_OUTPUT_CAP, SPECS, Toolbox
from helexa.acp.workspace import LocalWorkspace


class Asker:
    """A permission callback that records the prompts and answers `grant`."""

    def __init__(self, grant: bool = True) -> None:
        self.grant = grant
        self.asked: list[tuple[str, str, str]] = []

    async def __call__(self, call_id: str, title: str, kind: str, raw: dict[str, Any]) -> bool:
        self.asked.append((call_id, title, kind))
        return self.grant


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    (tmp_path / "proj").mkdir()
    return (tmp_path / "proj").resolve()


def box(cwd: Path, mode: str = "default", grant: bool = True) -> tuple[Toolbox, Asker]:
    asker = Asker(grant)
    return Toolbox(LocalWorkspace(cwd, asker), Policy(mode, cwd, plan_dir(cwd))), asker


async def run(tb: Toolbox, name: str, args: Any) -> ToolFinished:
    call = ToolCall("c1", name, args if isinstance(args, str) else json.dumps(args))
    return await tb.run(call, tb.started(call))


def test_specs() -> None:
    assert [s.name for s in SPECS] == ["read_file", "write_file", "edit_file", "list_dir", "bash"]
    edit = next(s for s in SPECS if s.name == "edit_file")
    assert edit.parameters["required"] == ["path", "old_text", "new_text"]
    assert "title" not in json.dumps(edit.parameters)


async def test_read_file_free_inside_with_range(cwd: Path) -> None:
    (cwd / "a.txt").write_text("one\ntwo\nthree\nfour\n")
    tb, asker = box(cwd)
    r = await run(tb, "read_file", {"path": "a.txt", "line": 2, "limit": 2})
    assert (r.status, r.output) == ("completed", "two\nthree\n")
    assert asker.asked == []
    card = tb.started(ToolCall("c9", "read_file", '{"path": "a.txt"}'))
    assert (card.kind, card.title, card.locations) == ("read", "Read a.txt", [str(cwd / "a.txt")])


async def test_read_outside_cwd_asks_even_in_default(cwd: Path) -> None:
    (cwd.parent / "secret").write_text("s")
    tb, asker = box(cwd, grant=False)
    r = await run(tb, "read_file", {"path": "../secret"})
    assert r.status == "failed" and "permission denied" in r.output
    assert asker.asked == [("c1", "Read ../secret", "read")]


async def test_write_asks_then_writes_with_diff(cwd: Path) -> None:
    tb, asker = box(cwd)
    r = await run(tb, "write_file", {"path": "new/b.txt", "content": "hello"})
    assert r.status == "completed" and (cwd / "new/b.txt").read_text() == "hello"
    assert r.diff is not None and r.diff.old_text is None and r.diff.new_text == "hello"
    assert asker.asked[0][2] == "edit"
    r = await run(tb, "write_file", {"path": "new/b.txt", "content": "bye"})
    assert r.diff is not None and r.diff.old_text == "hello"


async def test_write_denied_leaves_file(cwd: Path) -> None:
    (cwd / "keep").write_text("x")
    tb, _ = box(cwd, grant=False)
    r = await run(tb, "write_file", {"path": "keep", "content": "y"})
    assert r.status == "failed" and (cwd / "keep").read_text() == "x"


async def test_edit_file_unique_match(cwd: Path) -> None:
    (cwd / "m.py").write_text("a = 1\nb = 2\nb = 2\n")
    tb, _ = box(cwd, "bypassPermissions")
    r = await run(tb, "edit_file", {"path": "m.py", "old_text": "a = 1", "new_text": "a = 10"})
    assert r.status == "completed" and (cwd / "m.py").read_text() == "a = 10\nb = 2\nb = 2\n"
    assert r.diff is not None and r.diff.old_text == "a = 1\nb = 2\nb = 2\n"
    r = await run(tb, "edit_file", {"path": "m.py", "old_text": "b = 2", "new_text": "c"})
    assert r.status == "failed" and "matches 2 times" in r.output
    r = await run(tb, "edit_file", {"path": "m.py", "old_text": "zzz", "new_text": "c"})
    assert r.status == "failed" and "old_text not found" in r.output
    r = await run(tb, "edit_file", {"path": "nope.py", "old_text": "x", "new_text": "c"})
    assert r.status == "failed" and "nope.py" in r.output
    assert (cwd / "m.py").read_text() == "a = 10\nb = 2\nb = 2\n"


async def test_list_dir_tags(cwd: Path) -> None:
    (cwd / "d").mkdir()
    (cwd / "f").write_text("")
    (cwd / "l").symlink_to(cwd / "f")
    tb, _ = box(cwd)
    r = await run(tb, "list_dir", {"path": "."})
    assert r.output == "d d\nf f\nl l"


async def test_bash_output_status_and_cwd(cwd: Path) -> None:
    (cwd / "sub").mkdir()
    tb, asker = box(cwd)
    r = await run(tb, "bash", {"command": "pwd; echo err >&2; exit 3", "cwd": "sub"})
    assert r.status == "failed"
    assert r.output == f"{cwd / 'sub'}\nerr\n\n[exit status 3]"
    assert asker.asked[0][1:] == ("Run pwd; echo err >&2; exit 3", "execute")
    r = await run(tb, "bash", {"command": "true"})
    assert r.status == "completed" and r.output.endswith("[exit status 0]")
    card = tb.started(ToolCall("c2", "bash", json.dumps({"command": "echo a\necho b"})))
    assert card.title == "Run echo a…" and card.locations == []


async def test_bash_timeout_and_cap(cwd: Path) -> None:
    tb, _ = box(cwd, "bypassPermissions")
    r = await run(tb, "bash", {"command": "sleep 30", "timeout_s": 0.2})
    assert r.status == "failed" and "timed out after 0.2 s" in r.output
    r = await run(tb, "bash", {"command": "head -c 100000 /dev/zero | tr '\\0' a"})
    assert len(r.output) < BASH_OUTPUT_CAP + 200 and "characters omitted" in r.output


async def test_plan_mode(cwd: Path) -> None:
    tb, asker = box(cwd, "plan")
    r = await run(tb, "bash", {"command": "echo hi"})
    assert (r.status, r.output) == ("failed", "plan mode: shell execution is disabled")
    r = await run(tb, "write_file", {"path": "x.py", "content": "1"})
    assert r.status == "failed" and "plan mode" in r.output and not (cwd / "x.py").exists()
    target = plan_dir(cwd) / "plan.md"
    r = await run(tb, "write_file", {"path": str(target), "content": "- [ ] step"})
    assert r.status == "completed" and target.read_text() == "- [ ] step"
    assert asker.asked == []


@pytest.mark.parametrize(
    ("name", "args", "needle"),
    [
        ("read_file", "{not json", "arguments are not valid JSON"),
        ("read_file", "[1, 2]", "must be a JSON object"),
        ("read_file", {"line": 3}, "path: Field required"),
        ("read_file", {"path": "a", "line": 0}, "line: Input should be greater than or equal to 1"),
        ("edit_file", {"path": "a", "old_text": "", "new_text": "b"}, "old_text"),
        ("bash", {"command": 5}, "command: Input should be a valid string"),
        ("fly", {}, "unknown tool 'fly'; available: read_file"),
        ("read_file", {"path": "a\u0000b"}, "embedded null byte"),
        ("bash", {"command": "echo \u0000"}, "null byte"),
    ],
)
async def test_invalid_arguments_are_tool_errors(
    cwd: Path, name: str, args: Any, needle: str
) -> None:
    tb, _ = box(cwd)
    r = await run(tb, name, args)
    assert r.status == "failed" and needle in r.output


async def test_repaired_arguments_are_accepted(cwd: Path) -> None:
    (cwd / "a").write_text("A")
    tb, _ = box(cwd)
    r = await run(tb, "read_file", "{'path': 'a',}")
    assert (r.status, r.output) == ("completed", "A")
