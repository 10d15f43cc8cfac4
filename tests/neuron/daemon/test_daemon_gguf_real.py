"""Tier 1: the daemon with the real llamacpp worker on the tiny Qwen3's GGUF (CPU): load by
file path (served as local/<stem>, placed on the CPU, the file's quant), /tokenize = usage,
greedy text = transformers on the source checkpoint, unload → process gone."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from daemon_rig import NeuronFactory, chat_body, until
from daemon_rig import start_neuron as start_neuron  # the fixture

from helexa.neuron.memory import rss_mb
from rig.require import require_module

pytest.importorskip("torch")
pytest.importorskip("transformers")

pytestmark = pytest.mark.torch

ENGINE_CMD = [sys.executable, "-m", "helexa.neuron.engine.worker"]
MODEL = "local/tiny-qwen3-F32"


def transformers_greedy(hf_dir: Path, messages: list[dict[str, str]], n: int) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return str(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


async def gguf_neuron(start_neuron: NeuronFactory, gguf: Path, tmp_path: Path) -> Any:
    """A daemon with the real worker, the tiny Qwen3's GGUF loaded as MODEL (context 512)."""
    require_module("llama_cpp", install="pip install 'helexa[llamacpp]'")
    path = tmp_path / "tiny-qwen3-F32.gguf"
    shutil.copy(gguf, path)
    rig = await start_neuron(tokenizer_for=None, estimate_mb=None)
    rig.neuron.supervisor.worker_cmd = ENGINE_CMD
    if "llamacpp" not in rig.registry.harnesses:
        rig.registry.harnesses = (*rig.registry.harnesses, "llamacpp")  # the fake probe's list
    r = await rig.load(path, context=512)
    assert r.status_code == 200, r.text
    return rig


async def test_gguf_through_the_daemon(
    start_neuron: NeuronFactory, tiny_gguf: dict[str, Path], tiny_qwen3: Path, tmp_path: Path
) -> None:
    rig = await gguf_neuron(start_neuron, tiny_gguf["qwen3-F32"], tmp_path)
    info = await rig.info(MODEL)
    assert (info["harness"], info["quant"]) == ("llamacpp", "F32")
    assert info["placement"] == "2 layers on the CPU" and info["vram_used_mb"] > 0

    messages = [{"role": "user", "content": "Read the file /etc/hosts please."}]
    body = chat_body(MODEL, max_tokens=10, temperature=0)
    body["messages"] = messages
    count = (await rig.client.post("/tokenize", json=body)).json()["count"]
    r = await rig.client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == count
    assert r.json()["choices"][0]["message"]["content"] == transformers_greedy(
        tiny_qwen3, messages, 10
    )

    pid = rig.registry.records[MODEL].handle.pid
    assert (await rig.unload(MODEL)).status_code == 200
    await until(lambda: rss_mb(pid) is None, within=5)
    assert await rig.status(MODEL) == "unloaded"


async def test_prefix_cache_shows_in_usage(
    start_neuron: NeuronFactory, tiny_gguf: dict[str, Path], tmp_path: Path
) -> None:
    """A second conversation sharing a long prefix: usage reports the reused prompt tokens
    (chat `prompt_tokens_details`, responses `input_tokens_details`), the first reports none."""
    rig = await gguf_neuron(start_neuron, tiny_gguf["qwen3-F32"], tmp_path)
    history = " ".join(f"line {i} of the file says hello" for i in range(30))
    first = chat_body(MODEL, max_tokens=4, temperature=0)
    first["messages"] = [{"role": "user", "content": history + " First?"}]
    u1 = (await rig.client.post("/v1/chat/completions", json=first)).json()["usage"]
    assert u1["prompt_tokens_details"]["cached_tokens"] == 0
    second = {**first, "messages": [{"role": "user", "content": history + " Second?"}]}
    u2 = (await rig.client.post("/v1/chat/completions", json=second)).json()["usage"]
    assert 100 < u2["prompt_tokens_details"]["cached_tokens"] < u2["prompt_tokens"]
    resp = {"model": MODEL, "input": history + " Third?", "max_output_tokens": 4}
    u3 = (await rig.client.post("/v1/responses", json=resp)).json()["usage"]
    assert 100 < u3["input_tokens_details"]["cached_tokens"] < u3["input_tokens"]
