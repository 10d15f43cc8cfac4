"""Shared machinery for TOML config files: env overrides, validation, errors that name the key."""

from __future__ import annotations

import ipaddress
import logging
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

log = logging.getLogger("helexa.config")

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """A config table: unknown keys are kept so they can be warned about, not rejected."""

    model_config = ConfigDict(extra="allow")


def check_listen(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got '{v}'")
    return v


def is_loopback(host: str) -> bool:
    """Only this host can reach `host` (`localhost`, 127.0.0.0/8, ::1); a name may resolve
    to anything, so it is not."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


SECRET_KEY = re.compile(r"(?i)^(token|key|api_key|secret|password|.*_(token|key|secret))$")
"""Keys whose values config errors never quote (`token`, `key`, `hf_token`, ...)."""


def check_base_url(v: str) -> str:
    if not re.match(r"^https?://[^/]+", v):
        raise ValueError(f"expected an http(s) base URL, got '{v}'")
    return v.rstrip("/")


class Remote(Section):
    """A server a helexa program calls (a cortex neuron, a bench target): a name, a base URL
    and an optional bearer token, given inline or as the name of an env var."""

    name: str
    endpoint: str
    token: str | None = None
    token_env: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", v):
            raise ValueError("must match [A-Za-z0-9._-]+")
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return check_base_url(v)

    @model_validator(mode="after")
    def _one_token(self) -> Remote:
        if self.token is not None and self.token_env is not None:
            raise ValueError("set either 'token' or 'token_env', not both")
        return self


def unique_names(items: Sequence[Remote], what: str) -> None:
    names = [i.name for i in items]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"duplicate {what} names: {', '.join(dupes)}")


class ConfigError(Exception):
    """A config problem the operator must fix; CLIs exit 2 with this text."""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            raw = f.read()
        return tomllib.loads(raw.decode())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}{_offending_line(raw, str(e))}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 (byte {e.start})") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e


def _offending_line(raw: bytes, message: str) -> str:
    """Quote the line a syntax error points at, so the message names the key (but not the
    value of a secret key)."""
    m = re.search(r"at line (\d+)", message)
    lines = raw.decode().split("\n")
    if m is None or not 1 <= int(m.group(1)) <= len(lines):
        return ""
    line = lines[int(m.group(1)) - 1].strip()
    key, eq, _ = line.partition("=")
    if eq and SECRET_KEY.match(key.strip().strip("\"'")):
        line = f"{key.strip()} = <redacted>"
    return f": `{line[:200]}`"


def secret_values(data: Any) -> set[str]:
    """Every value held under a secret key, anywhere in a parsed config."""
    found: set[str] = set()
    items = (
        data.items()
        if isinstance(data, dict)
        else enumerate(data)
        if isinstance(data, list)
        else ()
    )
    for k, v in items:
        if isinstance(k, str) and SECRET_KEY.match(k) and isinstance(v, (str, int, float)):
            if len(str(v)) >= 4:
                found.add(str(v))
        elif isinstance(v, (dict, list)):
            found |= secret_values(v)
    return found


def redact(text: str, secrets: set[str]) -> str:
    for value in sorted(secrets, key=len, reverse=True):
        text = text.replace(value, "<redacted>")
    return text


def read_config(
    path: Path | None, *, explicit: bool, environ: Mapping[str, str], prefix: str, name: str
) -> tuple[dict[str, Any], str]:
    """The file's tables overlaid with `PREFIX_…` env vars, and the source name for errors.

    An explicit path that doesn't exist is an error (the CLIs exit 2); a missing default
    runs on defaults, with a warning.
    """
    data: dict[str, Any] = {}
    exists = path is not None and path.exists()
    if exists:
        assert path is not None
        data = read_toml(path)
    elif path is not None and explicit:
        raise ConfigError(f"{path}: config file not found")
    elif path is not None:
        log.warning("config %s not found; running with defaults", path)
    apply_env(data, prefix, environ)
    return data, str(path) if exists else name


def require_token_envs(
    items: list[Any], table: str, source: str, environ: Mapping[str, str]
) -> None:
    """Every `token_env` must name a set variable: a missing secret is a startup error."""
    for item in items:
        if item.token_env is not None and not environ.get(item.token_env):
            raise ConfigError(
                f"{source}: key '{table}.{item.name}.token_env': ${item.token_env} is unset"
            )


def parse_env_value(raw: str) -> Any:
    """An env value is a TOML value when it parses as one (numbers, bools, arrays, inline
    tables), else a plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env(data: dict[str, Any], prefix: str, environ: Mapping[str, str]) -> list[str]:
    """Overlay `PREFIX_SECTION__KEY=value` variables onto `data`; returns the keys applied."""
    applied = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(prefix) or name == prefix.rstrip("_") + "_CONFIG":
            continue
        parts = [p.lower() for p in name[len(prefix) :].split("__") if p]
        if not parts:
            continue
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = parse_env_value(raw)
        applied.append(".".join(parts))
    return applied


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    """Validate and turn pydantic's error list into one line per offending key."""
    try:
        obj = model.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(root)"
            lines.append(f"{source}: key '{key}': {err['msg']}")
        raise ConfigError(redact("\n".join(lines), secret_values(data))) from None
    warn_unknown(obj, source, "")
    return obj


def warn_unknown(obj: BaseModel, source: str, prefix: str) -> None:
    for key in obj.model_extra or {}:
        log.warning("%s: unknown key '%s%s' ignored", source, prefix, key)
    for name in type(obj).model_fields:
        value = getattr(obj, name)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                idx = f"[{i}]" if isinstance(value, list) else ""
                warn_unknown(item, source, f"{prefix}{name}{idx}.")
