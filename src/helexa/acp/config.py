"""helexa-acp's settings: the TOML file, else one `default` endpoint from the environment.

Plain dataclasses checked by hand so every message is the exact sentence the contract names
(an editor shows the agent's stderr; a typo must read as what to fix).
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

log = logging.getLogger("helexa.acp.config")

WireApi = Literal["openai-chat", "openai-responses", "anthropic-messages"]
WIRE_APIS: tuple[WireApi, ...] = ("openai-chat", "openai-responses", "anthropic-messages")
DEFAULT_BASE_URL = "http://localhost:31313/v1"
DEFAULT_MODEL = "helexa/large"
ENDPOINT_KEYS = frozenset(
    {
        "name",
        "base_url",
        "wire_api",
        "default_model",
        "api_key",
        "api_key_env",
        "max_tokens",
        "context_window",
    }
)
TOP_KEYS = frozenset({"default_endpoint", "system_prompt_path", "endpoints"})


class ConfigError(ValueError):
    """The config (file or environment) can't be used; the message says what to fix."""


@dataclass(frozen=True)
class Endpoint:
    name: str
    base_url: str  # including /v1, no trailing slash
    wire_api: WireApi = "openai-chat"
    default_model: str | None = None
    api_key: str | None = None  # api_key_env already resolved
    max_tokens: int | None = None
    context_window: int | None = None


@dataclass(frozen=True)
class Config:
    endpoints: tuple[Endpoint, ...]
    default_endpoint: str
    system_prompt_path: Path | None = None

    def endpoint(self, name: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.name == name), None)

    def select(self, selector: str) -> tuple[Endpoint, str]:
        """`endpoint:model` split at the first `:`; no colon or a leading one means the
        default endpoint (so `helexa/large` and `:org/m:tag` both pick it)."""
        name, sep, model = selector.partition(":")
        ep = self.endpoint(name) if sep and name else None
        if ep is None:
            default = self.endpoint(self.default_endpoint)
            assert default is not None  # checked when the config was built
            ep, model = default, (model if sep and not name else selector)
        if not model:
            raise ConfigError(f"model selector '{selector}' names no model")
        return ep, model


def config_path(environ: Mapping[str, str]) -> Path:
    explicit = environ.get("HELEXA_ACP_CONFIG_PATH")
    if explicit:
        return Path(explicit)
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "helexa-acp" / "config.toml"


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    """The file when it exists (an explicit HELEXA_ACP_CONFIG_PATH must), else the environment."""
    env = os.environ if environ is None else environ
    path = config_path(env)
    if not path.is_file():
        if env.get("HELEXA_ACP_CONFIG_PATH"):
            raise ConfigError(f"config file {path} does not exist")
        return from_environment(env)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config file {path}: {e}") from None
    return from_mapping(data, env)


def from_environment(env: Mapping[str, str]) -> Config:
    prompt = env.get("HELEXA_ACP_SYSTEM_PROMPT_PATH")
    ep = Endpoint(
        name="default",
        base_url=env.get("HELEXA_ACP_BASE_URL", DEFAULT_BASE_URL).rstrip("/"),
        default_model=env.get("HELEXA_ACP_MODEL", DEFAULT_MODEL),
        api_key=env.get("HELEXA_ACP_API_KEY") or None,
        max_tokens=_env_int(env, "HELEXA_ACP_MAX_TOKENS"),
        context_window=_env_int(env, "HELEXA_ACP_CONTEXT_WINDOW"),
    )
    return Config((ep,), "default", Path(prompt).expanduser() if prompt else None)


def from_mapping(data: Mapping[str, Any], env: Mapping[str, str]) -> Config:
    for key in sorted(set(data) - TOP_KEYS):
        log.warning("config: unknown key '%s' ignored", key)
    raw = data.get("endpoints")
    if raw is None or raw == []:
        raise ConfigError("config has no [[endpoints]] entries")
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise ConfigError("endpoints must be an array of tables ([[endpoints]])")
    endpoints = tuple(_endpoint(e, i, env) for i, e in enumerate(raw))
    names = [e.name for e in endpoints]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"endpoint name '{n}' is declared more than once")
    default = data.get("default_endpoint", names[0])
    if not isinstance(default, str):
        raise ConfigError("default_endpoint must be a string")
    if default not in names:
        raise ConfigError(f"default_endpoint '{default}' is not declared in [[endpoints]]")
    prompt = data.get("system_prompt_path")
    if prompt is not None and not isinstance(prompt, str):
        raise ConfigError("system_prompt_path must be a string")
    return Config(endpoints, default, Path(prompt).expanduser() if prompt else None)


def _endpoint(e: dict[str, Any], i: int, env: Mapping[str, str]) -> Endpoint:
    name = e.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"endpoints[{i}].name is required (a non-empty string)")
    if ":" in name:
        raise ConfigError(
            f"endpoint name '{name}' contains ':' which would clash with the endpoint:model "
            "selector syntax"
        )
    where = f"endpoint '{name}'"
    for key in sorted(set(e) - ENDPOINT_KEYS):
        log.warning("config: unknown key '%s' in %s ignored", key, where)
    base_url = _opt_str(e, "base_url", where)
    if not base_url or not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: base_url is required, an http(s) URL including /v1")
    wire_api = e.get("wire_api", "openai-chat")
    if wire_api not in WIRE_APIS:
        raise ConfigError(f"{where}: wire_api must be one of {', '.join(WIRE_APIS)}")
    api_key = _opt_str(e, "api_key", where)
    key_env = _opt_str(e, "api_key_env", where)
    if api_key is None and key_env:
        api_key = env.get(key_env) or None
        if api_key is None:  # the other endpoints still work; this one will say 401
            log.warning("config: %s: api_key_env names %s, which is not set", where, key_env)
    return Endpoint(
        name=name,
        base_url=base_url.rstrip("/"),
        wire_api=cast(WireApi, wire_api),
        default_model=_opt_str(e, "default_model", where),
        api_key=api_key,
        max_tokens=_opt_int(e, "max_tokens", where),
        context_window=_opt_int(e, "context_window", where),
    )


def _opt_str(e: Mapping[str, Any], key: str, where: str) -> str | None:
    v = e.get(key)
    if v is not None and not isinstance(v, str):
        raise ConfigError(f"{where}: {key} must be a string")
    return v


def _opt_int(e: Mapping[str, Any], key: str, where: str) -> int | None:
    v = e.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
        raise ConfigError(f"{where}: {key} must be a positive integer")
    return v


def _env_int(env: Mapping[str, str], var: str) -> int | None:
    v = env.get(var)
    if not v:
        return None
    if not v.isdigit() or int(v) <= 0:
        raise ConfigError(f"{var} must be a positive integer, got '{v}'")
    return int(v)
