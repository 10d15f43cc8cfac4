"""count_tokens for a GGUF catalogue model that isn't loaded: cortex tells the neuron which
file of the repo holds the tokenizer (the entry's quant); nothing is loaded."""

from __future__ import annotations

import httpx
import pytest

from rig.cortex_rig import CortexFactory
from rig.fake_neuron import FakeNeuron

CATALOGUE = {
    "models": [
        {"id": "Qwen/Qwen3-32B-GGUF", "harness": "llamacpp", "quant": "Q4_K_M"},
        {"id": "Qwen/Qwen3-8B", "quant": "bf16"},
    ]
}


@pytest.mark.parametrize(
    ("model", "quant"), [("Qwen/Qwen3-32B-GGUF", "Q4_K_M"), ("Qwen/Qwen3-8B", None)]
)
async def test_count_tokens_sends_the_gguf_quant(
    start_cortex: CortexFactory, model: str, quant: str | None
) -> None:
    async with FakeNeuron(token="node-secret") as n:
        cortex = await start_cortex({"n": n}, models=CATALOGUE)
        n.tokenize_count = 11
        async with httpx.AsyncClient() as c:
            r = await c.post(
                cortex.base + "/messages/count_tokens",
                json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
            )
        assert r.status_code == 200 and r.json() == {"input_tokens": 11}
        sent = n.last("/tokenize").json
        assert sent["model_id"] == model and sent.get("quant") == quant
        assert n.count("/models/load") == 0
