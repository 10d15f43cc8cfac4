"""The OpenAI Node SDK (npm `openai`, on Node 22 from the npm package `node`) against a real
cortex: chat, streams with and without usage, models, embeddings and the Responses API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rig.cli_rig import clean_env, run_cli
from rig.cortex_rig import CortexFactory
from rig.fake_neuron import MOCK_TEXT, FakeNeuron
from rig.require import CI_CACHE, require_missing

VERSIONS = "node@22.23.3 openai@7.60.0"  # keep in step with .ci/run
PREFIX = CI_CACHE / "openai-node"
NODE = PREFIX / "node_modules" / "node" / "bin" / "node"
SCRIPT = Path(__file__).with_name("openai_node.cjs")
KEY = "sk-node-test"
STREAMED = "token0token1token2token3"


async def run_script(base_url: str) -> dict[str, Any]:
    if not NODE.exists() or not (PREFIX / "node_modules" / "openai").is_dir():
        require_missing("the OpenAI Node SDK", f"npm install --prefix {PREFIX} {VERSIONS}")
    env = clean_env(
        drop_prefixes=("OPENAI_",),
        NODE_PATH=str(PREFIX / "node_modules"),
        HELEXA_BASE_URL=base_url,
        HELEXA_API_KEY=KEY,
    )
    rc, out, err = await run_cli(str(NODE), str(SCRIPT), env=env)
    assert rc == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


async def test_openai_node_sdk(start_cortex: CortexFactory, fake: FakeNeuron) -> None:
    fake.stream_usage = (12, 4)
    cortex = await start_cortex(
        {"mock-node": fake},
        models={"aliases": {"helexa/small": "test-model"}},
        entitlements={"require_auth": True, "keys": [{"key": KEY, "account_id": "node"}]},
    )
    out = await run_script(cortex.base)

    assert (out["chat"], out["chatUsage"]) == (MOCK_TEXT, 15)
    assert (out["streamed"], out["streamChunks"]) == (STREAMED, 4)  # no usage-only chunk
    usage = {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
    assert out["usageChunks"] == [[0, usage]] and out["lastHasUsage"] is True
    assert out["models"] == ["helexa/small", "test-model"]
    assert out["retrieved"] == ["helexa/small", "model", "test-model"]
    assert out["embeddings"] == [8, 8]
    assert out["response"] == ["completed", MOCK_TEXT]
    events = out["responseEvents"]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    assert events.count("response.output_text.delta") == 4
    assert out["responseStream"] == [STREAMED, "completed", STREAMED]
    assert out["missing"] == [404, "model_not_found"]
    # Every call was metered to the key, the streams that didn't ask for usage included.
    principal = cortex.gw.auth.resolve(KEY)
    assert principal is not None
    snap = cortex.gw.auth.snapshot(principal)
    assert snap.reserved == 0
    assert snap.spent == 15 + 16 + 16 + 7 + 10 + 10 + 10
