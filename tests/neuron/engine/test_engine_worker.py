"""A real worker process (tiny Qwen3, CPU, fp32) driven over its socket."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
from workerctl import WorkerClient

pytestmark = pytest.mark.torch

MAX_PROMPT = 200


@pytest.fixture(scope="module")
def w(tiny_qwen3: Path) -> Iterator[WorkerClient]:
    spec = {
        "path": str(tiny_qwen3),
        "served_id": "tiny/qwen3",
        "max_prompt_tokens": MAX_PROMPT,
        "max_output_tokens": 7,
    }
    with WorkerClient.start(spec) as client:
        yield client
    assert client.proc.returncode == 0  # shutdown → clean exit


@pytest.fixture(scope="module")
def tok(tiny_qwen3: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen3)


def chat(tok: Any, text: str) -> list[int]:
    return list(
        tok.apply_chat_template(
            [{"role": "user", "content": text}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    )


def test_ready_info(w: WorkerClient) -> None:
    info = w.ready
    assert info is not None
    assert info["harness"] == "torch"
    assert (info["quant"], info["dtype"]) == ("fp32", "float32")
    assert info["capabilities"] == ["text"]
    assert info["vram_used_mb"] > 0
    assert info["max_position_embeddings"] == 1024
    assert info["load_secs"] > 0
    assert info["eos_token_ids"] == [2]
    assert info["embedding_dim"] == 64
    assert info["devices"] == [0]
    assert [p["phase"] for p in w.progress] == ["load", "load", "warmup"]


def test_ping(w: WorkerClient) -> None:
    pong = w.call({"op": "ping", "id": "p1"})
    assert pong["ev"] == "pong"
    assert isinstance(pong["vram_used_mb"], int) and pong["vram_used_mb"] > 0


def test_greedy_matches_generate_and_text_is_whole(
    w: WorkerClient, tok: Any, tiny_qwen3: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    ids = chat(tok, "Hello, café 日本語 🙂")
    res = w.generate(ids, max_tokens=40)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3, dtype=torch.float32)
    inp = torch.tensor([ids])
    ref = model.generate(
        inp, attention_mask=torch.ones_like(inp), do_sample=False, max_new_tokens=40
    )
    assert res.ids == ref[0, len(ids) :].tolist()
    assert res.end["completion_tokens"] == len(res.ids)
    assert res.end["finish_reason"] == ("stop" if res.ids[-1] == 2 else "length")
    # Streaming never splits a character: the pieces join to the one-shot decode.
    assert res.text == tok.decode([i for i in res.ids if i != 2], skip_special_tokens=True)
    assert sum(d["tokens"] for d in res.deltas) <= res.end["completion_tokens"]
    assert all(d["text"] for d in res.deltas)


def test_seeded_sampling_is_reproducible(w: WorkerClient, tok: Any) -> None:
    ids = chat(tok, "Tell me something.")
    sampling = {"temperature": 1.0, "top_p": 0.9, "top_k": 50, "seed": 1234}
    a = w.generate(ids, max_tokens=30, sampling=sampling)
    b = w.generate(ids, max_tokens=30, sampling=sampling)
    c = w.generate(ids, max_tokens=30, sampling={**sampling, "seed": 4321})
    assert a.ids == b.ids and a.text == b.text
    assert a.ids != c.ids


def test_stop_strings(w: WorkerClient, tok: Any) -> None:
    ids = chat(tok, "Count forever.")
    full = w.generate(ids, max_tokens=60)
    texts = full.texts
    j = next(
        i
        for i in range(3, len(texts) - 1)
        if len(texts[i]) >= 2 and len(texts[i + 1]) >= 2 and "\ufffd" not in texts[i] + texts[i + 1]
    )
    stop = texts[j][-2:] + texts[j + 1][:2]  # spans a token boundary
    cut = full.text.find(stop)
    res = w.generate(ids, max_tokens=60, stop=["never-there", stop])
    assert res.text == full.text[:cut]
    assert res.end["finish_reason"] == "stop"
    assert res.end["stop_reason"] == stop
    assert stop not in res.text
    assert res.ids == full.ids[: len(res.ids)]


def test_max_tokens_zero_and_one(w: WorkerClient, tok: Any) -> None:
    ids = chat(tok, "hi")
    zero = w.generate(ids, max_tokens=0)
    assert zero.deltas == []
    assert (zero.end["finish_reason"], zero.end["completion_tokens"]) == ("length", 0)
    one = w.generate(ids, max_tokens=1)
    assert one.end["completion_tokens"] == 1
    assert one.end["finish_reason"] in ("length", "stop")


def test_cancel_stops_between_steps(w: WorkerClient, tok: Any) -> None:
    ids = chat(tok, "Count forever.")
    rid = w.submit(ids, max_tokens=1000)
    first = w.next_for(rid)
    assert first["ev"] == "delta"
    w.send({"op": "cancel", "id": rid})
    res = w.collect(rid)
    assert res.end["finish_reason"] == "cancelled"
    assert res.end["stop_reason"] is None
    assert res.end["completion_tokens"] < 1000
    # cancelling again, or an unknown id, is ignored; the worker carries on
    w.send({"op": "cancel", "id": rid})
    w.send({"op": "cancel", "id": "nope"})
    assert w.generate(ids, max_tokens=3).end["ev"] == "done"


def test_concurrent_requests_interleave_and_match(w: WorkerClient, tok: Any) -> None:
    prompts = [chat(tok, t) for t in ("one", "two two", "three three three")]
    solo = [w.generate(p, max_tokens=25).ids for p in prompts]
    rids = [w.submit(p, max_tokens=25, rid=f"c{i}") for i, p in enumerate(prompts)]
    order: list[tuple[str, str]] = []
    done: dict[str, dict[str, Any]] = {}
    while len(done) < 3:
        f = w.recv()
        assert f is not None
        order.append((f["id"], f["ev"]))
        if f["ev"] == "done":
            done[f["id"]] = f
    assert [done[r]["token_ids"] for r in rids] == solo
    # round-robin: the last request streams before the first one finishes
    first_done = order.index(("c0", "done"))
    assert any(i == "c2" and ev == "delta" for i, ev in order[:first_done])


@pytest.mark.parametrize(
    ("frame", "code", "param"),
    [
        ({"prompt_ids": []}, "invalid_value", None),
        ({"prompt_ids": [1, 99999]}, "invalid_value", "prompt_ids"),
        ({"prompt_ids": [1, "x"]}, "invalid_value", "prompt_ids"),
        ({"prompt_ids": [1], "sampling": {"temperature": -1}}, "invalid_value", "temperature"),
        ({"prompt_ids": [1], "sampling": {"top_p": 0}}, "invalid_value", "top_p"),
        ({"prompt_ids": [1], "max_tokens": -1}, "invalid_value", "max_tokens"),
        ({"prompt_ids": [1], "stop": [1]}, "invalid_value", "stop"),
        ({"prompt_ids": [5] * (MAX_PROMPT + 1)}, "context_length_exceeded", None),
    ],
)
def test_request_errors(
    w: WorkerClient, frame: dict[str, Any], code: str, param: str | None
) -> None:
    f = w.call({"op": "generate", "id": "bad", "max_tokens": 4, **frame})
    assert f["ev"] == "error"
    assert f["code"] == code
    assert f.get("param") == param
    if code == "context_length_exceeded":
        assert (
            f["message"]
            == f"prompt is {MAX_PROMPT + 1} tokens; this neuron accepts at most {MAX_PROMPT}"
        )


def test_unknown_op_and_duplicate_id(w: WorkerClient, tok: Any) -> None:
    assert w.call({"op": "frobnicate", "id": "u"})["code"] == "unknown_op"
    ids = chat(tok, "Count forever.")
    rid = w.submit(ids, max_tokens=500, rid="dup")
    assert w.next_for(rid)["ev"] == "delta"
    w.submit(ids, max_tokens=5, rid="dup")
    f = w.next_for(rid)
    while f["ev"] == "delta":
        f = w.next_for(rid)
    assert (f["ev"], f["code"]) == ("error", "invalid_value")
    w.send({"op": "cancel", "id": rid})
    assert w.collect(rid).end["finish_reason"] == "cancelled"


def test_embeddings(w: WorkerClient) -> None:
    inputs = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [5, 6, 7]]
    a = w.call({"op": "embed", "id": "e1", "inputs": inputs})
    b = w.call({"op": "embed", "id": "e2", "inputs": inputs})
    assert a["ev"] == "embedding"
    assert a["prompt_tokens"] == 12
    assert len(a["vectors"]) == 4 and all(len(v) == 64 for v in a["vectors"])
    assert all(math.isclose(math.hypot(*v), 1.0, rel_tol=1e-5) for v in a["vectors"])
    assert a["vectors"] == b["vectors"]
    assert a["vectors"][0] == a["vectors"][3]
    assert a["vectors"][0] != a["vectors"][1]
    assert w.call({"op": "embed", "id": "e3", "inputs": []})["code"] == "invalid_value"
    assert w.call({"op": "embed", "id": "e4", "inputs": [[1], []]})["code"] == "invalid_value"


def test_missing_max_tokens_takes_max_output_tokens(w: WorkerClient, tok: Any) -> None:
    w.send(
        {
            "op": "generate",
            "id": "dflt",
            "prompt_ids": chat(tok, "Count forever."),
            "sampling": {"temperature": 0},
        }
    )
    res = w.collect("dflt")
    assert (res.end["finish_reason"], res.end["completion_tokens"]) == ("length", 7)


def test_ping_is_answered_mid_generation(w: WorkerClient, tok: Any) -> None:
    rid = w.submit(chat(tok, "Count forever."), max_tokens=1000)
    assert w.next_for(rid)["ev"] == "delta"
    pong = w.call({"op": "ping", "id": "mid"})
    assert pong["ev"] == "pong"
    w.send({"op": "cancel", "id": rid})
    res = w.collect(rid)
    assert res.end["finish_reason"] == "cancelled"
    assert res.end["completion_tokens"] < 1000
