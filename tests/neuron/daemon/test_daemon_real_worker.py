"""Tier 1: the daemon with the real engine worker on a tiny Qwen3 (CPU, fp32) — load, chat,
/tokenize agreement, kill -9 and injected non-finite logits mid-stream, unload; under the torch
harness and, on the same checkpoint's F32 GGUF, the llamacpp one."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from daemon_rig import NeuronFactory, chat_body, until
from daemon_rig import start_neuron as start_neuron  # the fixture

from helexa.neuron.memory import rss_mb
from helexa.neuron.supervisor import Supervisor
from rig.require import require_module
from rig.sse import sse_data

pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.torch

ENGINE_CMD = [sys.executable, "-m", "helexa.neuron.engine.worker"]


@pytest.fixture(params=["torch", "llamacpp"])
def served(request: pytest.FixtureRequest, tiny_qwen3: Path) -> tuple[dict[str, Any], str]:
    """The tiny Qwen3 as each harness loads it (the /models/load fields), and its quant."""
    if request.param == "torch":
        return {"model_id": str(tiny_qwen3)}, "fp32"
    require_module("llama_cpp", install="pip install 'helexa[llamacpp]'")
    gguf = request.getfixturevalue("tiny_gguf")["qwen3-F32"]
    return {"model_id": str(gguf), "harness": "llamacpp"}, "F32"


async def test_real_worker_lifecycle(
    start_neuron: NeuronFactory, served: tuple[dict[str, Any], str], tmp_path: Path
) -> None:
    source, quant = served
    rig = await start_neuron(tokenizer_for=None, estimate_mb=None)
    rig.neuron.supervisor.worker_cmd = ENGINE_CMD
    if "llamacpp" not in rig.registry.harnesses:
        rig.registry.harnesses = (*rig.registry.harnesses, "llamacpp")  # the fake probe's list
    rig.neuron.supervisor.environ["HELEXA_TEST_FAULTS"] = "1"
    assert isinstance(rig.neuron.supervisor, Supervisor)
    arm = tmp_path / "armed"
    r = await rig.client.post(
        "/models/load",
        json={
            **source,
            "served_model_id": "tiny/qwen3",
            # 10 ms a step: a 200-token stream outlives the kill below even on a loaded box
            "test_faults": {
                "non_finite_at_step": 2,
                "arm_file": str(arm),
                "step_delay_secs": 0.01,
            },
        },
    )
    assert r.status_code == 200, r.text
    info = await rig.info("tiny/qwen3")
    assert info["status"] == "loaded" and info["vram_used_mb"] > 0 and info["quant"] == quant
    torch_batching = {"max_batch": 8, "refused": None}
    assert info.get("batching") == (torch_batching if quant == "fp32" else None)
    pid = rig.registry.records["tiny/qwen3"].handle.pid

    # chat: prompt tokens agree with /tokenize; greedy is reproducible
    body = chat_body("tiny/qwen3", "Hello", max_tokens=8, temperature=0)
    count = (await rig.client.post("/tokenize", json=body)).json()["count"]
    r1 = await rig.client.post("/v1/chat/completions", json=body)
    r2 = await rig.client.post("/v1/chat/completions", json=body)
    assert r1.status_code == 200, r1.text
    assert r1.json()["usage"]["prompt_tokens"] == count == int(r1.headers["x-helexa-prompt-tokens"])
    assert r1.json()["usage"]["completion_tokens"] == 8
    assert r1.json()["choices"][0]["message"] == r2.json()["choices"][0]["message"]
    async with rig.client.stream(
        "POST",
        "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    ) as s:
        frames = await sse_data(s)
    assert frames[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert frames[-1] == "[DONE]" and frames[-2]["choices"] == []
    assert frames[-3]["choices"][0]["finish_reason"] == "length"

    # kill -9 mid-stream → worker_crashed frame, recovering, then loaded with restarts 1
    slow = {**body, "max_tokens": 200, "stream": True}
    chunks: list[bytes] = []
    async with rig.client.stream("POST", "/v1/chat/completions", json=slow) as s:
        async for chunk in s.aiter_bytes():
            if not chunks:
                os.kill(pid, signal.SIGKILL)
            chunks.append(chunk)
    rest = b"".join(chunks)
    assert b"worker_crashed" in rest and rest.endswith(b"data: [DONE]\n\n")
    await rig.wait_status("tiny/qwen3", "loaded", within=60)
    assert (await rig.info("tiny/qwen3"))["restarts"] == 1
    assert rss_mb(pid) is None

    # injected non-finite logits (one-shot) → fault → recovering → served again
    arm.touch()
    r = await rig.client.post("/v1/chat/completions", json=body)
    assert r.status_code == 503 and r.json()["error"]["code"] == "worker_crashed"
    await rig.wait_status("tiny/qwen3", "loaded", within=60)
    assert rig.metric("neuron_worker_restarts_total", model="tiny/qwen3", reason="non_finite") == 1
    r = await rig.client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    assert (await rig.info("tiny/qwen3"))["restarts"] == 2

    # unload → the worker process is gone, the model is listed as unloaded
    pid = rig.registry.records["tiny/qwen3"].handle.pid
    r = await rig.unload("tiny/qwen3")
    assert r.status_code == 200 and r.json()["freed_mb"] > 0
    await until(lambda: rss_mb(pid) is None, within=1)
    assert await rig.status("tiny/qwen3") == "unloaded"


async def test_openai_sdk_on_the_real_engine_matches_transformers(
    start_neuron: NeuronFactory, tiny_qwen3: Path
) -> None:
    """The whole neuron path — template, tokenizer, worker loop, detokeniser, parser, SSE —
    gives the text transformers' own `generate` gives for the same chat, greedy."""
    openai = pytest.importorskip("openai")
    import httpx
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rig = await start_neuron(tokenizer_for=None, estimate_mb=None)
    rig.neuron.supervisor.worker_cmd = ENGINE_CMD
    r = await rig.client.post(
        "/models/load", json={"model_id": str(tiny_qwen3), "served_model_id": "tiny/qwen3"}
    )
    assert r.status_code == 200, r.text
    msgs = [{"role": "user", "content": "Read the file /etc/hosts please."}]

    tok = AutoTokenizer.from_pretrained(tiny_qwen3)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3, dtype=torch.float32).eval()
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    expected = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    client = openai.AsyncOpenAI(
        base_url=rig.url + "/v1",
        api_key="node-secret",
        http_client=httpx.AsyncClient(trust_env=False),
        max_retries=0,
    )
    async with client:
        reply = await client.chat.completions.create(
            model="tiny/qwen3", messages=msgs, max_tokens=12, temperature=0
        )
        m = reply.choices[0].message
        streamed = ""
        stream = await client.chat.completions.create(
            model="tiny/qwen3", messages=msgs, max_tokens=12, temperature=0, stream=True
        )
        async for chunk in stream:
            if chunk.choices:
                streamed += chunk.choices[0].delta.content or ""
        emb = await client.embeddings.create(model="tiny/qwen3", input=["hello", "world"])
        resp = await client.responses.create(
            model="tiny/qwen3", input="Read the file /etc/hosts please.", max_output_tokens=12
        )
    assert reply.usage is not None and reply.usage.completion_tokens == out.shape[1] - ids.shape[1]
    # this seeded model emits no markers for this prompt, so all of it is content
    assert m.content == expected and streamed == expected
    assert not (m.model_extra or {}).get("reasoning_content")
    assert len(emb.data) == 2 and abs(sum(x * x for x in emb.data[0].embedding) - 1) < 1e-4
    assert resp.status in ("completed", "incomplete")
