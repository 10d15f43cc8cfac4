"""The first thing anyone checks: the OpenAI SDK talks to a model through cortex."""

from __future__ import annotations

import openai

from rig.cortex_rig import CortexFactory
from rig.fake_neuron import FakeNeuron


async def test_openai_sdk_chat_through_cortex(
    start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    keys = {"keys": [{"key": "sk-test", "account_id": "acct"}]}
    cortex = await start_cortex({"mock-node": fake}, entitlements=keys)
    client = openai.AsyncOpenAI(base_url=cortex.base, api_key="sk-test", max_retries=0)
    reply = await client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "Hello from mock backend"
    assert reply.usage is not None and reply.usage.total_tokens == 15
    chunks = []
    stream = await client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    async for chunk in stream:
        if chunk.choices:
            chunks.append(chunk.choices[0].delta.content)
    assert chunks == ["token0", "token1", "token2", "token3"]
    await client.close()
