"""cortex.toml: gateway, eviction, neurons and API keys (see docs/reference.md#configuration)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from helexa.config.catalogue import Catalogue, load_catalogue
from helexa.config.loader import (
    Remote,
    Section,
    check_listen,
    read_config,
    require_token_envs,
    unique_names,
    validate,
)

log = logging.getLogger("helexa.config")

DEFAULT_PATH = Path("/etc/cortex/cortex.toml")
ENV_PREFIX = "CORTEX_"


class GatewaySettings(Section):
    listen: str = "0.0.0.0:31313"
    metrics_listen: str = "127.0.0.1:31314"  # the series name keys and accounts: loopback
    poll_interval_secs: float = Field(default=5, gt=0)
    probe_timeout_secs: float = Field(default=5, gt=0)
    discovery_interval_secs: float = Field(default=60, ge=0)
    request_timeout_secs: float = Field(default=300, gt=0)
    cold_load_timeout_secs: float = Field(default=1800, gt=0)
    max_body_mb: float = Field(default=8, gt=0)  # text needs far less; each costs parse memory
    shutdown_grace_secs: float = Field(default=30, ge=0)
    # Connection safety (docs/reference.md#configuration): a request head, a body, a blocked
    # write each get a deadline; open connections, large parses and a key's requests a cap.
    header_timeout_secs: float = Field(default=10, gt=0)
    body_timeout_secs: float = Field(default=60, gt=0)
    write_timeout_secs: float = Field(default=30, gt=0)
    max_connections: int = Field(default=1024, ge=1)
    max_large_parses: int = Field(default=4, ge=1)
    max_in_flight_per_key: int = Field(default=16, ge=1)
    # Browser origins allowed to call the API (CORS); none by default, never on /api/*.
    cors_origins: list[str] = Field(default_factory=list)
    # Directories under which an admin may load a model by path; catalogue ids always load.
    admin_load_roots: list[str] = Field(default_factory=list)

    _listen = field_validator("listen", "metrics_listen")(check_listen)


class Eviction(Section):
    strategy: Literal["lru", "priority"] = "lru"
    max_evictions_per_load: int = Field(default=3, ge=0)
    defrag_after_cycles: int = Field(default=50, ge=0)
    idle_check_secs: float = Field(default=5, gt=0)


class NeuronRemote(Remote):
    """A neuron cortex polls and routes to."""


class Window(Section):
    kind: Literal["balance", "rolling"] = "balance"
    seconds: int = Field(default=3600, gt=0)


class KeyConfig(Section):
    key: str = Field(min_length=1)
    account_id: str = Field(min_length=1)
    key_id: str | None = None
    hard_cap: int | None = Field(default=None, ge=0)
    window: Window = Field(default_factory=Window)
    admin: bool = False

    @property
    def label(self) -> str:
        return self.key_id or self.account_id


class Entitlements(Section):
    require_auth: bool = False
    keys: list[KeyConfig] = Field(default_factory=list)
    # Where the per-key ledger persists (SQLite); relative to this file's directory; "" keeps
    # it in memory only (every budget resets on restart).
    ledger_path: str = "ledger.sqlite3"

    @model_validator(mode="after")
    def _unique_keys(self) -> Entitlements:
        if len({k.key for k in self.keys}) != len(self.keys):
            raise ValueError("two [[entitlements.keys]] share the same key")
        return self


class CortexConfig(Section):
    models_config: str = "models.toml"
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    eviction: Eviction = Field(default_factory=Eviction)
    neurons: list[NeuronRemote] = Field(default_factory=list)
    entitlements: Entitlements = Field(default_factory=Entitlements)

    @model_validator(mode="after")
    def _unique_neurons(self) -> CortexConfig:
        unique_names(self.neurons, "neuron")
        return self


class Settings:
    """The validated config and the catalogue it points at, ready for the gateway."""

    def __init__(
        self, config: CortexConfig, catalogue: Catalogue, path: Path | None, models_path: Path
    ) -> None:
        self.config = config
        self.catalogue = catalogue
        self.path = path
        self.models_path = models_path  # re-read on SIGHUP and when it changes

    @property
    def ledger_path(self) -> Path | None:
        """The ledger file, resolved like models_config; None when persistence is off."""
        raw = self.config.entitlements.ledger_path
        if not raw:
            return None
        p = Path(raw)
        base = self.path.parent if self.path is not None else Path.cwd()
        return p if p.is_absolute() else base / p


def load_settings(
    path: Path | None, *, explicit: bool, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read cortex.toml (+ env overrides) and its catalogue.

    An explicit path that doesn't exist is an error; a missing default runs on defaults.
    """
    env = os.environ if environ is None else environ
    data, source = read_config(
        path, explicit=explicit, environ=env, prefix=ENV_PREFIX, name="cortex config"
    )
    config = validate(CortexConfig, data, source)
    require_token_envs(config.neurons, "neurons", source, env)
    models_path = Path(config.models_config)
    if not models_path.is_absolute():
        base = path.parent if path is not None else Path.cwd()
        models_path = base / models_path
    catalogue = load_catalogue(models_path)
    return Settings(config, catalogue, path, models_path)
