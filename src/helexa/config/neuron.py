"""neuron.toml: listener, limits, sources, admission defaults, default models.

Same machinery as cortex.toml: file, then `NEURON_`-prefixed environment (`__` nesting), then
defaults; errors name the file and the key. `NEURON_TOKEN` is `[auth] token`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from helexa.config.loader import (
    ConfigError,
    Section,
    check_base_url,
    check_listen,
    read_config,
    validate,
)
from helexa.wire.errors import ApiError
from helexa.wire.harness import HARNESSES
from helexa.wire.modelid import DEFAULT_SOURCE, known_schemes, parse_model_id
from helexa.wire.neuron import ModelSpec

log = logging.getLogger("helexa.config")

DEFAULT_PATH = Path("/etc/neuron/neuron.toml")
ENV_PREFIX = "NEURON_"
DEFAULT_SOURCES = {"helexa": "https://registry.helexa.ai"}


def physical_memory_mb() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 0


def default_cpu_memory_mb() -> int:
    """75 % of physical memory: the size of the `cpu` device."""
    return physical_memory_mb() * 3 // 4


class Auth(Section):
    token: str | None = None

    @field_validator("token", mode="before")
    @classmethod
    def _as_text(cls, v: Any) -> Any:
        # An env value like NEURON_AUTH__TOKEN=1234 parses as a TOML integer; a token is text.
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)
        return v or None


class Admission(Section):
    max_in_flight: int = Field(default=8, ge=1)  # a torch worker batches 8 (its max_batch)
    max_queue_depth: int = Field(default=16, ge=0)
    max_wait_secs: float = Field(default=120, gt=0)
    max_per_principal: int = Field(default=16, ge=0)  # 0: no cap; 16 as cortex's per-key cap


class DefaultModel(ModelSpec):
    """A `[[default_models]]` entry: a ModelSpec, but unknown keys are reported and a bad id
    stops the start (the operator sees it at once, not as a failed pre-warm)."""

    model_config = ConfigDict(extra="allow")

    @field_validator("model_id")
    @classmethod
    def _grammar(cls, v: str) -> str:
        try:
            parse_model_id(v)
        except ApiError as e:
            raise ValueError(e.message) from None
        return v


class HarnessEntry(Section):
    name: str


class NeuronConfig(Section):
    listen: str = "0.0.0.0:13131"
    bind_url: str = "http://localhost:13131"
    sources: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_SOURCES))
    source_token_env: dict[str, str] = Field(default_factory=dict)
    default_source: str = DEFAULT_SOURCE
    allowed_model_roots: list[str] | None = None
    allow_unauthenticated: bool = False
    load_timeout_secs: float = Field(default=600, gt=0)
    load_stall_secs: float = Field(default=120, gt=0)
    max_prompt_tokens: int = Field(default=16384, ge=1)
    max_output_tokens: int = Field(default=8192, ge=1)
    max_body_mb: float = Field(default=8, gt=0)
    max_tokenizations: int = Field(default=2, ge=1)
    tokenize_queue: int = Field(default=128, ge=0)  # bodies are already read and byte-capped
    write_timeout_secs: float = Field(default=30, gt=0)
    header_timeout_secs: float = Field(default=10, gt=0)
    body_timeout_secs: float = Field(default=60, gt=0)
    max_connections: int = Field(default=1024, ge=1)
    max_large_parses: int = Field(default=2, ge=1)
    worker_threads: int | None = Field(default=None, ge=1)  # None: cores / workers
    cache_dir: str | None = None
    cpu_memory_mb: int = Field(default_factory=default_cpu_memory_mb, ge=0)
    shutdown_grace_secs: float = Field(default=60, ge=0)
    auth: Auth = Field(default_factory=Auth)
    admission: Admission = Field(default_factory=Admission)
    default_models: list[DefaultModel] = Field(default_factory=list)
    harnesses: list[HarnessEntry] | None = None
    harness: dict[str, Any] = Field(default_factory=dict)  # [harness.<name>]: accepted, ignored

    _listen = field_validator("listen")(check_listen)

    @model_validator(mode="before")
    @classmethod
    def _legacy_port(cls, data: Any) -> Any:
        """`port = N` (the original's key) means `listen = "0.0.0.0:N"` unless listen is set."""
        if isinstance(data, dict) and "port" in data:
            data = dict(data)
            port = data.pop("port")
            if "listen" not in data:
                if isinstance(port, bool) or not isinstance(port, (int, str)):
                    raise ValueError("'port' must be an integer")
                data["listen"] = f"0.0.0.0:{port}"
        return data

    _bind_url = field_validator("bind_url")(check_base_url)

    @model_validator(mode="before")
    @classmethod
    def _source_tables(cls, data: Any) -> Any:
        """`[sources.<scheme>] endpoint = ..., token_env = ...` is the table form of
        `<scheme> = "url"`: the URL goes to `sources`, the variable name to `source_token_env`."""
        if not isinstance(data, dict) or not isinstance(data.get("sources"), dict):
            return data
        data = dict(data)
        sources, envs = {}, dict(data.get("source_token_env") or {})
        for scheme, v in data["sources"].items():
            if isinstance(v, dict):
                sources[scheme] = v.get("endpoint")
                if v.get("token_env"):
                    envs[scheme] = v["token_env"]
            else:
                sources[scheme] = v
        data["sources"], data["source_token_env"] = sources, envs
        return data

    @field_validator("sources", mode="before")
    @classmethod
    def _merge_sources(cls, v: Any) -> Any:
        """A `[sources]` table adds to (or overrides) the built-in `helexa` entry."""
        if isinstance(v, dict):
            return {**DEFAULT_SOURCES, **v}
        return v

    @field_validator("sources")
    @classmethod
    def _check_sources(cls, v: dict[str, str]) -> dict[str, str]:
        out = {}
        for scheme, url in v.items():
            if not re.fullmatch(r"[A-Za-z0-9._-]+", scheme):
                raise ValueError(f"scheme '{scheme}' must match [A-Za-z0-9._-]+")
            if not isinstance(url, str) or not re.match(r"^https?://[^/]+", url):
                raise ValueError(f"'{scheme}': expected an http(s) base URL as 'endpoint'")
            if url.startswith("http://"):
                log.warning(
                    "neuron config: source '%s' is plain http://: its weights (and its token, if "
                    "it has one) cross the network unencrypted",
                    scheme,
                )
            out[scheme] = url.rstrip("/")
        return out

    @field_validator("allowed_model_roots")
    @classmethod
    def _roots(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        roots = [str(Path(r).expanduser()) for r in v]
        relative = [r for r in roots if not r.startswith("/")]
        if relative:
            raise ValueError(f"roots must be absolute paths: {', '.join(relative)}")
        return roots

    def model_roots(self) -> list[str]:
        """Where path loads may come from: `allowed_model_roots`, else the hub cache and the
        `[[default_models]]` paths themselves (what `helexa up --model PATH` writes)."""
        if self.allowed_model_roots is not None:
            return list(self.allowed_model_roots)
        from huggingface_hub import constants

        roots = [self.cache_dir or constants.HF_HUB_CACHE]
        for m in self.default_models:
            if m.model_id.startswith("/"):
                roots.append(m.model_id.rstrip("/") or "/")
        return roots

    @field_validator("cache_dir")
    @classmethod
    def _cache_dir(cls, v: str | None) -> str | None:
        return str(Path(v).expanduser()) if v else None

    @field_validator("default_source")
    @classmethod
    def _default_source(cls, v: str, info: ValidationInfo) -> str:
        sources = info.data.get("sources")
        if sources is not None and v not in known_schemes(sources):
            raise ValueError(
                f"'{v}' is not a configured source (known: {', '.join(known_schemes(sources))})"
            )
        return v

    @field_validator("default_models")
    @classmethod
    def _default_models(cls, v: list[DefaultModel], info: ValidationInfo) -> list[DefaultModel]:
        sources = info.data.get("sources")
        default_source = info.data.get("default_source")
        served: set[str] = set()
        for i, m in enumerate(v):
            mid = parse_model_id(m.model_id)
            if sources is not None and default_source is not None and not mid.is_path:
                scheme = mid.scheme or default_source
                if scheme not in known_schemes(sources):
                    raise ValueError(
                        f"[{i}].model_id '{m.model_id}': source scheme '{scheme}' is not "
                        f"configured (known: {', '.join(known_schemes(sources))})"
                    )
            sid = mid.served_id(m.served_model_id)
            if sid in served:
                raise ValueError(f"[{i}]: served id '{sid}' is listed twice")
            served.add(sid)
        return v

    @field_validator("harnesses")
    @classmethod
    def _harnesses(cls, v: list[HarnessEntry] | None) -> list[HarnessEntry] | None:
        for entry in v or []:
            if entry.name not in HARNESSES:
                log.warning(
                    "neuron config: unknown harness '%s' in [[harnesses]] ignored (known: %s)",
                    entry.name,
                    ", ".join(HARNESSES),
                )
        return v

    def enabled_harnesses(self) -> set[str] | None:
        """Harnesses `[[harnesses]]` enables (`candle` = `torch`), or None for "all available"."""
        if self.harnesses is None:
            return None
        return {HARNESSES[h.name] for h in self.harnesses if h.name in HARNESSES}


def load_neuron_settings(
    path: Path | None, *, explicit: bool, environ: Mapping[str, str] | None = None
) -> NeuronConfig:
    """Read neuron.toml (+ env overrides).

    An explicit path that doesn't exist is an error (the CLI exits 2); a missing default runs
    on defaults.
    """
    env = os.environ if environ is None else environ
    rest = {k: v for k, v in env.items() if k != "NEURON_TOKEN"}
    data, source = read_config(
        path, explicit=explicit, environ=rest, prefix=ENV_PREFIX, name="neuron config"
    )
    if env.get("NEURON_TOKEN"):
        auth = data.get("auth")
        if not isinstance(auth, dict):
            auth = data["auth"] = {}
        auth["token"] = env["NEURON_TOKEN"]
    cfg = validate(NeuronConfig, data, source)
    for scheme, var in cfg.source_token_env.items():
        if scheme not in known_schemes(cfg.sources):
            raise ConfigError(f"{source}: key 'sources.{scheme}.token_env': no such source")
        if not env.get(var):
            raise ConfigError(f"{source}: key 'sources.{scheme}.token_env': ${var} is unset")
    return cfg
