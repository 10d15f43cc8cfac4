"""The ACP agent: sessions, their modes and models, and prompts run through the agent loop.

Every method answers the editor with a result or a JSON-RPC error that says what was wrong;
nothing a client sends can end the process.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acp import PROTOCOL_VERSION, Client, RequestError
from acp.helpers import update_current_mode
from acp.schema import (
    AgentCapabilities,
    ClientCapabilities,
    ConfigOptionUpdate,
    Implementation,
    InitializeResponse,
    ListSessionsResponse,
    PromptCapabilities,
    PromptResponse,
    SessionCapabilities,
    SessionInfo,
    SessionListCapabilities,
    SetSessionConfigOptionResponse,
    SetSessionModeResponse,
)
from pydantic import BaseModel, Field, ValidationError

from helexa import __version__
from helexa.acp.client_workspace import ClientWorkspace
from helexa.acp.config import Config, ConfigError
from helexa.acp.events import Event, ToolFinished, ToolStarted
from helexa.acp.history import Message
from helexa.acp.loop import TurnSettings, run_turn
from helexa.acp.models import ModelChoice
from helexa.acp.options import (
    MODE_IDS,
    LoadedSession,
    NewSession,
    config_options,
    legacy_models,
    mode_state,
)
from helexa.acp.paths import plan_dir
from helexa.acp.policy import Policy
from helexa.acp.prompt import user_message
from helexa.acp.providers import ProviderError, make_provider
from helexa.acp.sessions import SessionError, SessionStore, StoredSession
from helexa.acp.tools import Toolbox
from helexa.acp.updates import event_update, replay, terminal_shown
from helexa.acp.workspace import LocalWorkspace

log = logging.getLogger("helexa.acp.agent")
PAGE = 50  # sessions per session/list page


@dataclass
class Live:
    """A session this process holds: the stored record plus what only lives in memory."""

    stored: StoredSession
    always: set[str] = field(default_factory=set)  # tool kinds allowed for the session
    cancelled: asyncio.Event | None = None  # set while a prompt runs


class SetModel(BaseModel):
    """Legacy `session/set_model` params."""

    session_id: str = Field(alias="sessionId")
    model_id: str = Field(alias="modelId")


def mark_failed(history: list[Message], ev: ToolFinished) -> None:
    """Note a failed call on its stored result (the loop appends it before the event)."""
    if ev.status == "failed":
        for m in reversed(history):
            if m.role == "tool" and m.tool_call_id == ev.call_id:
                m.failed = True
                return


def invalid(message: str, **data: Any) -> RequestError:
    return RequestError(-32602, message, data or None)


class HelexaAgent:
    def __init__(
        self,
        cfg: Config,
        store: SessionStore,
        choices: Awaitable[list[ModelChoice]],
        system_prompt: str,
    ) -> None:
        self.cfg = cfg
        self.store = store
        # Listing models runs while the editor initializes; the first use waits for it.
        self._discovery = asyncio.ensure_future(choices)
        self.system_prompt = system_prompt
        self.caps = ClientCapabilities()
        self.sessions: dict[str, Live] = {}
        self._client: Client | None = None

    def on_connect(self, conn: Client) -> None:
        self._client = conn

    @property
    def client(self) -> Client:
        assert self._client is not None, "on_connect runs before any request"
        return self._client

    # ---- lifecycle --------------------------------------------------------------------------

    async def initialize(
        self,
        protocol_version: int,
        client_capabilities: ClientCapabilities | None = None,
        client_info: Implementation | None = None,
        **kwargs: Any,
    ) -> InitializeResponse:
        self.caps = client_capabilities or ClientCapabilities()
        who = client_info.name if client_info else "an unnamed client"
        log.info("initialize from %s (protocol %d)", who, protocol_version)
        return InitializeResponse(
            # ACP: the client's version if spoken here, else our latest; we speak just this one
            protocol_version=PROTOCOL_VERSION,
            agent_capabilities=AgentCapabilities(
                load_session=True,
                prompt_capabilities=PromptCapabilities(image=True, embedded_context=True),
                session_capabilities=SessionCapabilities(list=SessionListCapabilities()),
            ),
            agent_info=Implementation(name="helexa-acp", title="helexa", version=__version__),
            auth_methods=[],
        )

    async def new_session(
        self, cwd: str, mcp_servers: list[Any] | None = None, **kwargs: Any
    ) -> NewSession:
        if not Path(cwd).is_absolute():
            raise invalid(f"cwd must be an absolute path, got '{cwd}'", cwd=cwd)
        text = self.system_prompt.replace("{cwd}", cwd)
        history = [Message("system", text)] if text else []
        choices = await self.choices()
        model = self._default_model(choices)
        stored = StoredSession(uuid.uuid4().hex, cwd, model, "default", history)
        self._save(stored)
        self.sessions[stored.session_id] = Live(stored)
        return NewSession(session_id=stored.session_id, **self._offer(stored, choices))

    async def load_session(
        self, cwd: str, session_id: str, mcp_servers: list[Any] | None = None, **kwargs: Any
    ) -> LoadedSession:
        live = self._live(session_id)
        s = live.stored
        home = Path(s.cwd)  # titles and locations as the live cards had them
        cards = Toolbox(LocalWorkspace(home), Policy(s.mode_id, home, plan_dir(home))).started
        for update in replay(s.history, cards):
            await self.client.session_update(session_id, update)
        return LoadedSession(**self._offer(live.stored, await self.choices()))

    async def list_sessions(
        self, cwd: str | None = None, cursor: str | None = None, **kwargs: Any
    ) -> ListSessionsResponse:
        start = int(cursor) if cursor and cursor.isdigit() else 0
        if cursor and not cursor.isdigit():
            raise invalid(f"cursor '{cursor}' was not given by session/list", cursor=cursor)
        found = self.store.list(cwd)
        page = found[start : start + PAGE]
        more = start + PAGE < len(found)
        return ListSessionsResponse(
            sessions=[
                SessionInfo(
                    session_id=s.session_id, cwd=s.cwd, title=s.title(), updated_at=s.updated_at
                )
                for s in page
            ],
            next_cursor=str(start + PAGE) if more else None,
        )

    # ---- settings ---------------------------------------------------------------------------

    async def set_session_mode(
        self, session_id: str, mode_id: str, **kwargs: Any
    ) -> SetSessionModeResponse:
        live = self._live(session_id)
        self._set_mode(live, mode_id)
        await self._announce_options(live)  # the `mode` config option follows
        return SetSessionModeResponse()

    async def set_config_option(
        self, config_id: str, session_id: str, value: str | bool, **kwargs: Any
    ) -> SetSessionConfigOptionResponse:
        live = self._live(session_id)
        choices = await self.choices()
        if config_id == "model" and isinstance(value, str):
            self._set_model(live, value, choices)
        elif config_id == "mode" and isinstance(value, str):
            self._set_mode(live, value)
            await self.client.session_update(session_id, update_current_mode(value))
        else:
            raise invalid(f"unknown config option '{config_id}' (model, mode)", configId=config_id)
        s = live.stored
        return SetSessionConfigOptionResponse(
            config_options=config_options(choices, s.model_id, s.mode_id)
        )

    async def set_model_legacy(self, params: Any) -> dict[str, Any]:
        """`session/set_model`, gone from current ACP but still sent by older Zed builds."""
        try:
            p = SetModel.model_validate(params)
        except ValidationError as e:
            raise RequestError.invalid_params({"errors": e.errors(include_url=False)}) from None
        live = self._live(p.session_id)
        self._set_model(live, p.model_id, await self.choices())
        await self._announce_options(live)  # the `model` config option follows
        return {}

    async def _announce_options(self, live: Live) -> None:
        s = live.stored
        options = config_options(await self.choices(), s.model_id, s.mode_id)
        update = ConfigOptionUpdate(session_update="config_option_update", config_options=options)
        await self.client.session_update(s.session_id, update)

    def _set_mode(self, live: Live, mode_id: str) -> None:
        if mode_id not in MODE_IDS:
            raise invalid(f"unknown mode '{mode_id}' ({', '.join(sorted(MODE_IDS))})")
        live.stored.mode_id = mode_id
        self._save(live.stored)

    def _set_model(self, live: Live, model_id: str, choices: list[ModelChoice]) -> None:
        known = {c.value for c in choices}
        if model_id not in known:
            raise invalid(f"unknown model '{model_id}'; available: {', '.join(sorted(known))}")
        live.stored.model_id = model_id
        self._save(live.stored)

    # ---- prompts ----------------------------------------------------------------------------

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> PromptResponse:
        live = self._live(session_id)
        if live.cancelled is not None:
            raise RequestError(-32600, "a prompt is already running in this session")
        stored = live.stored
        try:
            ep, model = self.cfg.select(stored.model_id)
        except ConfigError as e:
            raise invalid(str(e)) from None
        before = len(stored.history)
        stored.history.append(user_message(prompt))
        live.cancelled = cancelled = asyncio.Event()
        running: list[str] = []  # the call whose tool runs now
        terminals: dict[str, str] = {}  # call id → the editor's terminal it ran in

        async def on_terminal(terminal_id: str) -> None:
            if running:
                terminals[running[0]] = terminal_id
                await self.client.session_update(
                    session_id, terminal_shown(running[0], terminal_id)
                )

        async def emit(ev: Event) -> None:
            if isinstance(ev, ToolStarted):
                running[:] = [ev.call_id]
            terminal = terminals.get(ev.call_id) if isinstance(ev, ToolFinished) else None
            await self.client.session_update(session_id, event_update(ev, terminal))
            if isinstance(ev, ToolFinished):  # a round is complete: keep it
                mark_failed(stored.history, ev)
                self._save(stored)

        cwd = Path(stored.cwd)
        ws = ClientWorkspace(self.client, session_id, self.caps, cwd, live.always, on_terminal)
        settings = TurnSettings(model, ep.max_tokens, ep.context_window, stored.mode_id)
        try:
            provider = make_provider(ep.wire_api, ep.base_url, ep.api_key)
            stop = await run_turn(stored.history, provider, ws, settings, emit, cancelled)
        except ProviderError as e:
            if len(stored.history) == before + 1:  # nothing came back: a retry starts clean
                stored.history.pop()
            raise RequestError(-32603, f"endpoint '{ep.name}' ({ep.base_url}): {e}") from None
        finally:
            live.cancelled = None
            self._save(stored)
        return PromptResponse(stop_reason=stop)

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        live = self.sessions.get(session_id)
        if live is not None and live.cancelled is not None:
            live.cancelled.set()

    # ---- helpers ----------------------------------------------------------------------------

    def _live(self, session_id: str) -> Live:
        live = self.sessions.get(session_id)
        if live is not None:
            return live
        try:
            stored = self.store.load(session_id)
        except SessionError as e:
            raise RequestError(-32603, str(e), {"sessionId": session_id}) from None
        if stored is None:
            raise invalid(f"unknown session '{session_id}'", sessionId=session_id)
        live = self.sessions[session_id] = Live(stored)
        return live

    async def choices(self) -> list[ModelChoice]:
        return await asyncio.shield(self._discovery)

    def _offer(self, s: StoredSession, choices: list[ModelChoice]) -> dict[str, Any]:
        return {
            "modes": mode_state(s.mode_id),
            "config_options": config_options(choices, s.model_id, s.mode_id),
            "models": legacy_models(choices, s.model_id),
        }

    def _default_model(self, choices: list[ModelChoice]) -> str:
        ep = self.cfg.endpoint(self.cfg.default_endpoint)
        assert ep is not None
        if ep.default_model:
            return f"{ep.name}:{ep.default_model}"
        first = next((c for c in choices if c.endpoint == ep.name), None) or next(
            iter(choices), None
        )
        if first is None:
            raise RequestError(
                -32603,
                f"no model: set default_model for endpoint '{ep.name}' or make "
                f"GET {ep.base_url}/models answer",
            )
        return first.value

    def _save(self, s: StoredSession) -> None:
        try:
            self.store.save(s)
        except OSError as e:
            log.error("session %s not saved: %s", s.session_id, e)
