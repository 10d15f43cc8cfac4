"""The agent's protocol methods in-process (no model needed): paging, validation, options."""

from __future__ import annotations

from pathlib import Path

import pytest
from acp import RequestError

from helexa.acp.agent import HelexaAgent
from helexa.acp.config import from_environment
from helexa.acp.models import ModelChoice
from helexa.acp.sessions import SessionStore
from rig.acp_client import RecordingClient

CHOICES = [ModelChoice("default:m", "default", "m"), ModelChoice("default:n", "default", "n")]


async def listed() -> list[ModelChoice]:
    return CHOICES


def agent(tmp_path: Path) -> tuple[HelexaAgent, RecordingClient]:
    cfg = from_environment({"HELEXA_ACP_MODEL": "m"})
    a = HelexaAgent(cfg, SessionStore(tmp_path / "sessions"), listed(), "work in {cwd}")
    client = RecordingClient()
    a.on_connect(client)
    return a, client


async def test_session_list_pages_with_a_cursor(tmp_path: Path) -> None:
    a, _ = agent(tmp_path)
    made = [(await a.new_session(cwd="/proj")).session_id for _ in range(53)]
    await a.new_session(cwd="/other")
    first = await a.list_sessions(cwd="/proj")
    assert len(first.sessions) == 50 and first.next_cursor is not None
    rest = await a.list_sessions(cwd="/proj", cursor=first.next_cursor)
    assert len(rest.sessions) == 3 and rest.next_cursor is None
    got = [s.session_id for s in first.sessions + rest.sessions]
    assert got == made[::-1]  # newest first, each once
    with pytest.raises(RequestError, match="cursor 'zz' was not given by session/list"):
        await a.list_sessions(cwd="/proj", cursor="zz")


async def test_new_session_offers_modes_models_and_the_system_prompt(tmp_path: Path) -> None:
    a, _ = agent(tmp_path)
    r = await a.new_session(cwd="/proj")
    assert r.modes is not None and r.modes.current_mode_id == "default"
    assert [m.id for m in r.modes.available_modes] == ["default", "bypassPermissions", "plan"]
    assert r.config_options is not None
    model, mode = r.config_options
    assert (model.id, model.category, model.current_value) == ("model", "model", "default:m")
    assert [o.value for o in model.options] == ["default:m", "default:n"]
    assert (mode.id, mode.category, mode.current_value) == ("mode", "mode", "default")
    wire = r.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert wire["models"] == {
        "availableModels": [
            {"modelId": "default:m", "name": "default:m"},
            {"modelId": "default:n", "name": "default:n"},
        ],
        "currentModelId": "default:m",
    }
    stored = a.store.load(r.session_id)
    assert stored is not None and stored.history[0].content == "work in /proj"


async def test_settings_are_checked_and_stored(tmp_path: Path) -> None:
    a, client = agent(tmp_path)
    sid = (await a.new_session(cwd="/proj")).session_id
    with pytest.raises(RequestError, match="unknown config option 'speed'"):
        await a.set_config_option(config_id="speed", session_id=sid, value="fast")
    with pytest.raises(
        RequestError, match="unknown model 'default:x'; available: default:m, default:n"
    ):
        await a.set_config_option(config_id="model", session_id=sid, value="default:x")
    with pytest.raises(RequestError, match="unknown session 'ghost'"):
        await a.set_session_mode(session_id="ghost", mode_id="plan")
    with pytest.raises(RequestError) as e:
        await a.set_model_legacy({"sessionId": sid})
    assert e.value.code == -32602
    r = await a.set_config_option(config_id="mode", session_id=sid, value="plan")
    assert r is not None and r.config_options[1].current_value == "plan"
    assert client.updates[-1].session_update == "current_mode_update"
    await a.set_model_legacy({"sessionId": sid, "modelId": "default:n"})
    stored = a.store.load(sid)
    assert stored is not None and (stored.mode_id, stored.model_id) == ("plan", "default:n")
