"""The daemon with a GGUF model (fake workers): the llamacpp load spec it sends (every shard,
context, layer split over mismatched cards), the 507 and CPU offload decided before any worker
starts, the file's quant, and /tokenize from the GGUF metadata without loading anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from daemon_rig import NeuronFactory, Rig, set_fake, start_neuron, worker_events

from helexa.neuron.tokenizer import ChatTokenizer

__all__ = ["start_neuron"]
GPUS_12_8 = [(12288, 12000, "8.6"), (8192, 8000, "8.6")]


def gguf_dir(rig: Rig, src: Path, name: str) -> Path:
    """A copy of a GGUF file (and its shards) in its own directory, with a fake-worker script."""
    d = rig.root / name
    d.mkdir()
    for f in src.parent.glob(src.name.replace("00001", "*")):
        shutil.copy(f, d / f.name)
    set_fake(d, {"info": {"harness": "llamacpp"}})
    return d / src.name


async def gguf_neuron(start_neuron: NeuronFactory, **kw: Any) -> Rig:
    rig = await start_neuron(tokenizer_for=None, **kw)
    rig.registry.harnesses = ("torch", "llamacpp")  # the fake probe finds torch only
    return rig


async def test_split_over_12_and_8_gb_cards(
    start_neuron: NeuronFactory, tiny_gguf_split: Path
) -> None:
    rig = await gguf_neuron(start_neuron, gpus=GPUS_12_8)
    path = gguf_dir(rig, tiny_gguf_split, "split")
    r = await rig.load(path, tensor_parallel=2, context=512, kv_cache_type="q8_0")
    assert r.status_code == 200, r.text
    info = await rig.info("local/tiny-Q8_0")
    assert (info["harness"], info["quant"], info["devices"]) == ("llamacpp", "Q8_0", [0, 1])
    assert info["placement"] == "2 of 2 layers on the GPU(s) split 0.60/0.40"
    spec = json.loads((path.parent / "spec.json").read_text())
    assert spec["gguf_files"] == [
        str(path.parent / f"tiny-Q8_0-0000{i}-of-00003.gguf") for i in (1, 2, 3)
    ]
    assert (spec["n_ctx"], spec["n_gpu_layers"], spec["tensor_split"]) == (512, -1, [0.6, 0.4])
    assert spec["kv_cache_type"] == "q8_0"
    assert "cvd=GPU-0,GPU-1" in worker_events(path.parent)[0]


async def test_too_big_is_507_before_a_worker_starts_unless_cpu_offload(
    start_neuron: NeuronFactory, tiny_gguf: dict[str, Path]
) -> None:
    rig = await gguf_neuron(start_neuron, gpus=[(1024, 100, "8.6")])
    path = gguf_dir(rig, tiny_gguf["qwen3-F32"], "big")
    r = await rig.load(path, context=1024)
    assert r.status_code == 507, r.text
    err = r.json()["error"]
    assert err["code"] == "insufficient_memory" and err["required_mb"] > 100
    assert worker_events(path.parent) == []
    r = await rig.load(path, context=1024, cpu_offload=True)
    assert r.status_code == 200, r.text
    info = await rig.info("local/tiny-qwen3-F32")
    assert (info["quant"], info["placement"]) == ("F32", "2 layers on the CPU")
    spec = json.loads((path.parent / "spec.json").read_text())
    assert (spec["n_gpu_layers"], spec["tensor_split"]) == (0, None)


@pytest.mark.parametrize("loaded", [False, True])
async def test_tokenize_counts_from_the_gguf(
    start_neuron: NeuronFactory, tiny_gguf: dict[str, Path], loaded: bool
) -> None:
    rig = await gguf_neuron(start_neuron)
    path = gguf_dir(rig, tiny_gguf["qwen3-Q8_0"], "tok")
    model = "local/tiny-qwen3-Q8_0"
    if loaded:
        assert (await rig.load(path)).status_code == 200
    messages = [{"role": "user", "content": "Read the file /etc/hosts, 42 times"}]
    body: dict[str, Any] = {"model": model, "messages": messages}
    if not loaded:
        body["model_id"] = str(path)
    r = await rig.client.post("/tokenize", json=body)
    assert r.status_code == 200, r.text
    _, ids = ChatTokenizer(path).encode_chat(messages)
    assert r.json()["count"] == len(ids)
    if not loaded:  # counted from the file header: no worker, no weights
        assert worker_events(path.parent) == []
