"""Simon Willison's `llm` CLI against a real cortex: an `extra-openai-models.yaml` entry pointing
at cortex, as its docs describe for OpenAI-compatible servers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from rig.cli_rig import clean_env, run_cli
from rig.cortex_rig import Cortex, CortexFactory
from rig.fake_neuron import MOCK_TEXT, FakeNeuron
from rig.require import require_missing

KEY = "sk-llm-test"
STREAMED = "token0token1token2token3"


async def llm(user_dir: Path, *args: str) -> str:
    if importlib.util.find_spec("llm") is None:
        require_missing("llm", "pip install -e '.[test]'")
    env = clean_env(drop_prefixes=("OPENAI_", "LLM_"), LLM_USER_PATH=str(user_dir))
    rc, out, err = await run_cli(sys.executable, "-m", "llm", *args, env=env)
    assert rc == 0, err
    return out


def write_config(user_dir: Path, base: str) -> None:
    """Two models: helexa/small over chat completions and over the Responses API."""
    user_dir.mkdir()
    entry = f"  model_name: helexa/small\n  api_base: {base}\n  api_key_name: helexa\n"
    (user_dir / "extra-openai-models.yaml").write_text(
        f"- model_id: helexa-small\n{entry}"
        f"- model_id: helexa-small-responses\n{entry}  responses: true\n"
    )
    (user_dir / "keys.json").write_text(json.dumps({"helexa": KEY}))


async def configured(start_cortex: CortexFactory, fake: FakeNeuron, user_dir: Path) -> Cortex:
    cortex = await start_cortex(
        {"mock-node": fake},
        models={"aliases": {"helexa/small": "test-model"}},
        entitlements={"require_auth": True, "keys": [{"key": KEY, "account_id": "llm"}]},
    )
    write_config(user_dir, cortex.base)
    return cortex


async def test_llm_prompts_streaming_and_not(
    start_cortex: CortexFactory, fake: FakeNeuron, tmp_path: Path
) -> None:
    user_dir = tmp_path / "llm"
    fake.stream_usage = (12, 4)
    cortex = await configured(start_cortex, fake, user_dir)

    assert await llm(user_dir, "-m", "helexa-small", "Say hello") == STREAMED + "\n"
    sent = fake.last("/v1/chat/completions").json
    assert sent["model"] == "test-model" and sent["stream"] is True
    assert await llm(user_dir, "-m", "helexa-small", "--no-stream", "Hi") == MOCK_TEXT + "\n"
    assert await llm(user_dir, "-m", "helexa-small-responses", "Hey") == STREAMED + "\n"

    # llm asks for usage on its streams and logs it: the usage chunk reached it.
    logs = {e["prompt"]: e for e in json.loads(await llm(user_dir, "logs", "-n", "3", "--json"))}
    tokens = {p: (e["input_tokens"], e["output_tokens"]) for p, e in logs.items()}
    assert tokens == {"Say hello": (12, 4), "Hi": (10, 5), "Hey": (5, 5)}
    assert logs["Hey"]["response"] == STREAMED
    principal = cortex.gw.auth.resolve(KEY)
    assert principal is not None
    assert cortex.gw.auth.snapshot(principal).spent == 16 + 15 + 10
