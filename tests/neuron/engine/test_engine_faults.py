"""Worker failure paths: load errors, injected non-finite logits, crashes, socket closes; and
scripted output through a marker-splitting tokenizer (hold markers, UTF-8, EOS)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")
from workerctl import WorkerClient, markers_whole
from workerctl import workers as started

from helexa.neuron.engine.loader import LoadError, LoadSpec

pytestmark = pytest.mark.torch

MARKERS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
SCRIPT = (
    "Let me see<think>step by step, naïve 日本語</think>\n\n"
    'Sure 🙂 <tool_call>{"name": "Read", "arguments": {"path": "/etc/hosts"}}</tool_call>'
)


@pytest.fixture(scope="module")
def broken_dir(tmp_path_factory: pytest.TempPathFactory, tiny_qwen3: Path) -> Path:
    d = tmp_path_factory.mktemp("broken")
    for f in tiny_qwen3.iterdir():
        shutil.copy(f, d / f.name)
    (d / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    return d


@pytest.fixture(scope="module")
def arm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("arm") / "armed"


@pytest.fixture(scope="module")
def workers(
    tiny_qwen3: Path, tiny_qwen3_split_markers: Path, broken_dir: Path, arm: Path
) -> Iterator[dict[str, WorkerClient]]:
    specs = {
        "nonfinite": {
            "path": str(tiny_qwen3),
            "served_id": "nf",
            "test_faults": {"non_finite_at_step": 2, "arm_file": str(arm)},
        },
        "crash": {
            "path": str(tiny_qwen3),
            "served_id": "crash",
            "test_faults": {"exit_at_step": 3},
        },
        "broken": {"path": str(broken_dir), "served_id": "broken"},
        "script": {
            "path": str(tiny_qwen3_split_markers),
            "served_id": "script",
            "test_faults": {"script_text": SCRIPT},
        },
    }
    with started(specs) as ws:
        yield ws


def test_injected_non_finite_logits_fault_and_exit(
    workers: dict[str, WorkerClient], arm: Path
) -> None:
    w = workers["nonfinite"]
    ok = w.generate([1, 5, 6], max_tokens=5)  # not armed: served normally
    assert ok.end["ev"] == "done"
    arm.touch()
    rid = w.submit([1, 5, 6], max_tokens=5)
    with pytest.raises(EOFError, match="fault"):
        w.collect(rid)
    fault = w.other[-1]
    assert fault["ev"] == "fault" and fault["kind"] == "non_finite"
    assert "step 2" in fault["detail"]
    assert w.wait_exit() == 1
    assert not arm.exists()  # one-shot: the restarted worker would serve again
    assert w.recv() is None


def test_crash_mid_stream(workers: dict[str, WorkerClient]) -> None:
    w = workers["crash"]
    rid = w.submit([1, 5, 6], max_tokens=10)
    frames = []
    with pytest.raises(EOFError):
        while True:
            frames.append(w.next_for(rid))
    assert len(frames) <= 3 and all(f["ev"] == "delta" for f in frames)
    assert w.wait_exit() == -signal.SIGKILL


def test_broken_weights_fail_the_load(workers: dict[str, WorkerClient]) -> None:
    w = workers["broken"]
    f = w.load_failed
    assert f is not None and w.ready is None
    assert (f["status"], f["code"]) == (500, "load_failed")
    assert f["message"].startswith("loading 'broken' failed: ")
    assert w.wait_exit() == 1


def test_script_through_split_markers(workers: dict[str, WorkerClient]) -> None:
    w = workers["script"]
    res = w.generate([1, 5, 6], max_tokens=200, hold=MARKERS)
    assert res.text == SCRIPT
    assert res.end["finish_reason"] == "stop"  # EOS after the script
    assert res.ids[-1] in w.ready["eos_token_ids"]  # type: ignore[index]
    assert markers_whole(res.texts, MARKERS)
    assert not any("\ufffd" in t for t in res.texts)
    assert sum(d["tokens"] for d in res.deltas) == res.end["completion_tokens"] - 1
    # a stop string inside the reasoning; hold still applies to what came before
    res = w.generate([1, 5, 6], max_tokens=200, hold=MARKERS, stop=["by step"])
    assert res.text == "Let me see<think>step "
    assert res.end["stop_reason"] == "by step"
    # the cap inside a marker: everything generated so far comes out at the end
    short = w.generate([1, 5, 6], max_tokens=5, hold=MARKERS)
    assert short.end["finish_reason"] == "length"
    assert SCRIPT.startswith(short.text)


def test_socket_close_ends_the_worker(workers: dict[str, WorkerClient]) -> None:
    w = workers["script"]
    w.sock.shutdown(socket.SHUT_RDWR)
    assert w.wait_exit() == 0


def spawn_raw(spec_frame: dict | None) -> tuple[WorkerClient, int]:
    w = WorkerClient.__new__(WorkerClient)
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [sys.executable, "-m", "helexa.neuron.engine.worker", "--fd", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    ours.settimeout(60)
    WorkerClient.__init__(w, proc, ours)
    if spec_frame is None:
        ours.shutdown(socket.SHUT_WR)
        return w, proc.wait(30)
    w.send(spec_frame)
    return w, 0


@pytest.mark.parametrize(
    ("spec", "status", "code", "message"),
    [
        (
            {"path": "/nonexistent/model", "served_id": "org/missing"},
            404,
            "model_source_not_found",
            "model 'org/missing' was not found at /nonexistent/model",
        ),
        (
            {"quant": "int4"},
            400,
            "unsupported_quant",
            "quant 'int4' is not supported by harness 'torch' yet; use 'bf16'",
        ),
        (
            {"quant": "Q4_K_M"},
            400,
            "unsupported_quant",
            "quant 'Q4_K_M' is a GGUF type; use harness 'llamacpp'",
        ),
        (
            {"quant": "fp8"},
            400,
            "unsupported_quant",
            "quant 'fp8' is not supported by harness 'torch'",
        ),
    ],
)
def test_fast_load_failures(
    tiny_qwen3: Path, spec: dict, status: int, code: str, message: str
) -> None:
    full = {"path": str(tiny_qwen3), "served_id": "m", "device": "cpu", **spec}
    w, _ = spawn_raw({"op": "load", "spec": full})
    try:
        f = w.wait_load()
        assert f == {"ev": "load_failed", "status": status, "code": code, "message": message}
        assert w.wait_exit() == 1
    finally:
        w.close()


def test_first_frame_must_be_load() -> None:
    w, _ = spawn_raw({"op": "generate", "id": "x", "prompt_ids": [1]})
    try:
        f = w.recv()
        assert f is not None and (f["ev"], f["status"]) == ("load_failed", 400)
        assert w.wait_exit() == 1
    finally:
        w.close()


def test_eof_before_load_exits_cleanly() -> None:
    w, rc = spawn_raw(None)
    w.close()
    assert rc == 0


def test_fault_plan_needs_the_env_switch(tiny_qwen3: Path) -> None:
    spec = {"path": str(tiny_qwen3), "served_id": "m", "test_faults": {"exit_at_step": 0}}
    assert LoadSpec.from_frame(spec, environ={}).test_faults is None
    plan = LoadSpec.from_frame(spec, environ={"HELEXA_TEST_FAULTS": "1"}).test_faults
    assert plan is not None and plan.exit_at_step == 0
    with pytest.raises(LoadError) as ei:
        LoadSpec.from_frame(
            {**spec, "test_faults": {"nope": 1}}, environ={"HELEXA_TEST_FAULTS": "1"}
        )
    assert ei.value.status == 400
