"""`helexa-acp`: the Agent Client Protocol bridge an editor starts (JSON-RPC on stdio)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import click

from helexa.acp.config import Config, ConfigError, load_config
from helexa.cli_common import version_option
from helexa.logs import EscapeControl

log = logging.getLogger("helexa.acp")
LEVELS = ("debug", "info", "warning", "error")
DEFAULT_SYSTEM_PROMPT = (
    "You are a coding agent working in the user's project at {cwd}. Use the tools to read, "
    "search and change files and to run commands; read a file before you edit it, keep edits "
    "small and exact, and say briefly what you did."
)
EPILOG = """\b
Zed (settings.json):
  "agent_servers": {
    "helexa": {"type": "custom", "command": "helexa-acp"}
  }

\b
Config: $HELEXA_ACP_CONFIG_PATH, else $XDG_CONFIG_HOME/helexa-acp/config.toml
  default_endpoint, system_prompt_path, [[endpoints]] name, base_url (with /v1),
  wire_api = openai-chat | openai-responses | anthropic-messages, default_model,
  api_key, api_key_env, max_tokens, context_window.
Without a file: HELEXA_ACP_BASE_URL (http://localhost:31313/v1), HELEXA_ACP_MODEL
  (helexa/large), HELEXA_ACP_API_KEY, HELEXA_ACP_SYSTEM_PROMPT_PATH, HELEXA_ACP_MAX_TOKENS,
  HELEXA_ACP_CONTEXT_WINDOW.
Logs: stderr, or appended to $HELEXA_ACP_LOG_FILE; level $HELEXA_ACP_LOG (info).
Sessions: $XDG_DATA_HOME/helexa-acp/sessions/."""


def setup_logging() -> None:
    level = os.environ.get("HELEXA_ACP_LOG", "info").lower()
    path = os.environ.get("HELEXA_ACP_LOG_FILE")
    handler: logging.Handler = (
        logging.FileHandler(path, encoding="utf-8") if path else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(EscapeControl())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if level in LEVELS else logging.INFO)
    if level not in LEVELS:
        log.warning("HELEXA_ACP_LOG=%s is not one of %s; using info", level, ", ".join(LEVELS))


def system_prompt(cfg: Config) -> str:
    """The configured file's text, else the built-in prompt (`{cwd}` left for the session)."""
    if cfg.system_prompt_path is None:
        return DEFAULT_SYSTEM_PROMPT
    try:
        return cfg.system_prompt_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"system prompt {cfg.system_prompt_path} can't be read: {e}") from None


async def run(cfg: Config, prompt: str, out_fd: int) -> None:
    from helexa.acp.agent import HelexaAgent
    from helexa.acp.models import discover
    from helexa.acp.paths import data_home
    from helexa.acp.sessions import SessionStore
    from helexa.acp.stdio import open_stdio, serve

    reader, writer = await open_stdio(out_fd)
    store = SessionStore(data_home() / "sessions")
    await serve(HelexaAgent(cfg, store, discover(cfg), prompt), reader, writer)


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EPILOG,
)
@version_option("helexa-acp")
def main() -> None:
    """helexa-acp: a coding agent on your own models, for Zed or any Agent Client Protocol
    client. The editor starts it and speaks JSON-RPC on stdin/stdout; it runs the agent loop
    against cortex (or any OpenAI chat, OpenAI Responses or Anthropic Messages endpoint)."""
    from helexa.acp.stdio import claim_stdout

    out_fd = claim_stdout()
    setup_logging()
    try:
        cfg = load_config()
        prompt = system_prompt(cfg)
    except ConfigError as e:
        log.error("config error: %s", e)
        sys.exit(2)
    try:
        asyncio.run(run(cfg, prompt, out_fd))
    except KeyboardInterrupt:
        pass
