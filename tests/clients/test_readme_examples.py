"""The README's Python examples and its curl commands for cortex run as written against a real
cortex in front of a fake neuron.

Only the address is changed (the README's port 31313 becomes the test cortex's); the API key
comes from `HELEXA_API_KEY`, as the README says, or is the literal key a snippet names.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import orjson
import pytest

from rig.cli_rig import clean_env, run_cli
from rig.cortex_rig import CortexFactory
from rig.fake_neuron import MOCK_TEXT, FakeNeuron
from rig.require import require_executable

README = Path(__file__).resolve().parents[2] / "README.md"
ADDRESS = re.compile(r"(127\.0\.0\.1|localhost):31313")
ENV_KEY = "sk-readme-test"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.M | re.S)


def curl_commands() -> list[str]:
    """The `curl` lines of the sh blocks that talk to cortex, continuation lines joined."""
    blocks = re.findall(r"^```sh\n(.*?)^```", README.read_text(), re.M | re.S)
    lines = [line for b in blocks for line in b.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line.startswith("curl ") and ADDRESS.search(line)]


def test_readme_has_the_sdk_examples() -> None:
    blocks = python_blocks()
    assert any("from openai import OpenAI" in b and "stream=True" in b for b in blocks)
    assert any("import anthropic" in b for b in blocks)
    assert all(ADDRESS.search(b) for b in blocks), "every example talks to cortex's address"
    assert any("/v1/models" in c for c in curl_commands())
    assert any("Bearer" in c and "/chat/completions" in c for c in curl_commands())


@pytest.mark.parametrize("index", range(len(python_blocks())))
async def test_readme_python_example_runs(
    index: int, start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    code = python_blocks()[index]
    literal_keys = set(re.findall(r'api_key="([^"]+)"', code))
    keys = [{"key": k, "account_id": "readme"} for k in {ENV_KEY, *literal_keys}]
    cortex = await start_cortex(
        {"mock-node": fake},
        models={"aliases": {m: "test-model" for m in re.findall(r'model="([^"]+)"', code)}},
        entitlements={"require_auth": True, "keys": keys},
    )
    code = ADDRESS.sub(cortex.url.removeprefix("http://"), code)
    env = clean_env(drop_prefixes=("OPENAI_", "ANTHROPIC_"), HELEXA_API_KEY=ENV_KEY)
    rc, text, err = await run_cli(sys.executable, "-c", code, env=env)
    assert rc == 0, err
    assert MOCK_TEXT in text or "token0token1token2token3" in text, text
    if "stream=True" in code:
        assert text.endswith("token0token1token2token3"), text
    assert fake.count("/v1/chat/completions") >= 1


@pytest.mark.parametrize("command", curl_commands())
async def test_readme_curl_command_runs(
    command: str, start_cortex: CortexFactory, fake: FakeNeuron
) -> None:
    require_executable("curl", install="apt-get install curl")
    named = set(re.findall(r"Bearer ([\w-]+)", command))
    keys = [{"key": k, "account_id": "readme"} for k in {ENV_KEY, *named}]
    cortex = await start_cortex(
        {"mock-node": fake},
        models={"aliases": {m: "test-model" for m in re.findall(r'"model": "([^"]+)"', command)}},
        entitlements={"require_auth": True, "keys": keys},  # as `helexa up` writes it
    )
    command = ADDRESS.sub(cortex.url.removeprefix("http://"), command)
    rc, out, err = await run_cli("bash", "-c", command, env=clean_env(HELEXA_API_KEY=ENV_KEY))
    assert rc == 0, err
    reply = orjson.loads(out)
    if "/chat/completions" in command:
        assert reply["choices"][0]["message"]["content"] == MOCK_TEXT
    else:
        assert reply["object"] == "list" and "test-model" in [m["id"] for m in reply["data"]]
