"""What a session offers the editor: its modes, its config options (model, mode) and the legacy
`models` block older Zed builds read, all from one list of model choices."""

from __future__ import annotations

from typing import Annotated, Any

from acp.schema import (
    LoadSessionResponse,
    NewSessionResponse,
    SessionConfigOptionSelect,
    SessionConfigSelectOption,
    SessionMode,
    SessionModeState,
)
from pydantic import Field

from helexa.acp.models import ModelChoice

MODES = [
    SessionMode(id="default", name="Default", description="Reads are free; edits and shell ask."),
    SessionMode(
        id="bypassPermissions", name="Bypass permissions", description="Everything is allowed."
    ),
    SessionMode(
        id="plan", name="Plan", description="Reads are free; writes only to the plan; no shell."
    ),
]
MODE_IDS = frozenset(m.id for m in MODES)


class NewSession(NewSessionResponse):
    """session/new's answer with the pre-config-options `models` block (legacy clients)."""

    models: Annotated[dict[str, Any] | None, Field(alias="models")] = None


class LoadedSession(LoadSessionResponse):
    models: Annotated[dict[str, Any] | None, Field(alias="models")] = None


def mode_state(current: str) -> SessionModeState:
    return SessionModeState(current_mode_id=current, available_modes=MODES)


def config_options(choices: list[ModelChoice], model_id: str, mode_id: str) -> list[Any]:
    models = [SessionConfigSelectOption(value=c.value, name=c.value) for c in choices]
    if model_id not in {c.value for c in choices}:
        models.insert(0, SessionConfigSelectOption(value=model_id, name=model_id))
    return [
        SessionConfigOptionSelect(
            id="model",
            name="Model",
            category="model",
            type="select",
            current_value=model_id,
            options=models,
        ),
        SessionConfigOptionSelect(
            id="mode",
            name="Mode",
            category="mode",
            type="select",
            current_value=mode_id,
            options=[SessionConfigSelectOption(value=m.id, name=m.name) for m in MODES],
        ),
    ]


def legacy_models(choices: list[ModelChoice], model_id: str) -> dict[str, Any]:
    """`{availableModels: [{modelId, name}], currentModelId}` as ACP had before config options."""
    ids = list(dict.fromkeys([model_id, *(c.value for c in choices)]))
    return {
        "availableModels": [{"modelId": i, "name": i} for i in ids],
        "currentModelId": model_id,
    }
