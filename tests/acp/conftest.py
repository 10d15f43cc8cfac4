"""helexa-acp end to end: a real cortex in front of a fake neuron that replays scripted turns,
and the environment a `helexa-acp` process needs to reach it (config, data dir, log file)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pytest
from scripted_llm import FORMATS, Turn

from rig.cortex_rig import Cortex, CortexFactory
from rig.fake_neuron import FakeNeuron
from rig.recorder import Recorder, Seen
from rig.toml import write_toml

ENDPOINTS = {"chat": "openai-chat", "resp": "openai-responses", "anth": "anthropic-messages"}
MODEL = "test-model"


@dataclass
class AcpStack:
    cortex: Cortex
    fake: FakeNeuron
    env: dict[str, str]
    project: Path  # the session's cwd
    data: Path  # XDG_DATA_HOME
    log: Path
    stderr: TextIO
    script: list[Turn]
    recorded: list[Seen]  # every request cortex answered

    def seen(self, path: str) -> list[dict[str, Any]]:
        """Bodies of the streaming requests the neuron got on `path`."""
        return [r.json for r in self.fake.calls(path) if isinstance(r.json, dict)]


@pytest.fixture
async def acp_stack(
    start_cortex: CortexFactory, fake: FakeNeuron, tmp_path: Path
) -> AsyncIterator[AcpStack]:
    """Each streaming chat/responses request the neuron gets plays the next scripted Turn
    (cortex turns /v1/messages into chat, so one script serves all three wire APIs)."""
    script: list[Turn] = []
    recorder = Recorder()
    cortex = await start_cortex({"mock-node": fake}, middlewares=[recorder.middleware])

    def respond(path: str, body: dict[str, Any]) -> list[bytes] | None:
        assert script, f"the model was asked once more than scripted: {path}"
        return FORMATS[path](script.pop(0))

    fake.sse_responder = respond
    project = tmp_path / "project"
    project.mkdir()
    config = tmp_path / "config.toml"
    write_toml(
        config,
        {
            "default_endpoint": "chat",
            "endpoints": [
                {"name": n, "base_url": cortex.base, "wire_api": w, "default_model": MODEL}
                for n, w in ENDPOINTS.items()
            ],
        },
    )
    env = {
        "HELEXA_ACP_CONFIG_PATH": str(config),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "HELEXA_ACP_LOG_FILE": str(tmp_path / "acp.log"),
        "HELEXA_ACP_LOG": "debug",
        "HOME": str(tmp_path),
    }
    with (tmp_path / "acp.stderr").open("w") as stderr:
        yield AcpStack(
            cortex,
            fake,
            env,
            project,
            tmp_path / "data",
            tmp_path / "acp.log",
            stderr,
            script,
            recorder.seen,
        )
