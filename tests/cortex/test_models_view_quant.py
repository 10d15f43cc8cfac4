"""`GET /v1/models` shows the effective harness and quant: the catalogue's ask until a node
serves the model, then what the node serves (for a GGUF repo, the picked file's own type)."""

from __future__ import annotations

import httpx

from rig.cortex_rig import CortexFactory
from rig.fake_neuron import FakeNeuron, model_info

CATALOGUE = {
    "models": [
        {"id": "Qwen/Qwen3-32B-GGUF", "harness": "llamacpp", "quant": "q4_k_m"},
        {"id": "Qwen/Qwen3-8B-GGUF", "harness": "llamacpp", "quant": "Q8_0"},
        {"id": "Qwen/Qwen3-8B"},
    ]
}


async def test_effective_quant(start_cortex: CortexFactory) -> None:
    served = model_info("Qwen/Qwen3-32B-GGUF", harness="llamacpp", quant="Q4_K_M")
    async with FakeNeuron(token="node-secret", models=[served]) as n:
        cortex = await start_cortex({"n": n}, models=CATALOGUE)
        async with httpx.AsyncClient() as c:
            data = {e["id"]: e for e in (await c.get(cortex.base + "/models")).json()["data"]}
    loaded = data["Qwen/Qwen3-32B-GGUF"]
    assert (loaded["harness"], loaded["quant"]) == ("llamacpp", "Q4_K_M")
    assert loaded["locations"][0]["quant"] == "Q4_K_M"
    cold = data["Qwen/Qwen3-8B-GGUF"]
    assert (cold["harness"], cold["quant"], cold["loaded"]) == ("llamacpp", "Q8_0", False)
    torch = data["Qwen/Qwen3-8B"]
    assert torch["harness"] == "torch" and "quant" not in torch
