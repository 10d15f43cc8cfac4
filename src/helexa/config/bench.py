"""helexa-bench.toml: sweep settings, scenarios, the API listener and targets."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

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

DEFAULT_PATH = Path("/etc/helexa-bench/helexa-bench.toml")
ENV_PREFIX = "HELEXA_BENCH_"


class BenchSection(Section):
    sweep_interval_secs: float = Field(default=1800, gt=0)
    samples_per_version: int = Field(default=5, ge=1)
    iteration_pause_secs: float = Field(default=2, ge=0)
    request_timeout_secs: float = Field(default=600, gt=0)
    db_path: str = "/var/lib/helexa-bench/bench.sqlite"


class Scenarios(Section):
    prompt_sizes: list[int] = Field(default_factory=lambda: [128, 4096])
    max_tokens: int = Field(default=256, ge=1)
    concurrency: list[int] = Field(default_factory=lambda: [4])
    cold_load: bool = True

    @field_validator("prompt_sizes", "concurrency")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError("every entry must be a positive integer")
        if len(set(v)) != len(v):
            raise ValueError("entries must be unique")
        return v


class Api(Section):
    enabled: bool = True
    listen: str = "0.0.0.0:13132"

    _listen = field_validator("listen")(check_listen)


class Target(Remote):
    """A server to benchmark: a neuron (build from /version) or any OpenAI-compatible engine
    (build from the `version` label, models from `models` or its /v1/models)."""

    kind: Literal["neuron", "openai"] = "neuron"
    gpu: str | None = None
    models: list[str] | None = None
    version: str | None = None
    api_key: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Target:
        if self.kind == "neuron" and (self.models is not None or self.version is not None):
            raise ValueError("'models' and 'version' are for kind = \"openai\" targets")
        return self

    def bearer(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The credential to send: `api_key` (openai), `token`, or `$token_env`."""
        env = os.environ if environ is None else environ
        if self.api_key is not None:
            return self.api_key
        if self.token_env is not None:
            return env.get(self.token_env) or None
        return self.token


class BenchConfig(Section):
    bench: BenchSection = Field(default_factory=BenchSection)
    scenarios: Scenarios = Field(default_factory=Scenarios)
    api: Api = Field(default_factory=Api)
    targets: list[Target] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_targets(self) -> BenchConfig:
        unique_names(self.targets, "target")
        return self


def load_bench_config(
    path: Path | None,
    *,
    explicit: bool,
    environ: Mapping[str, str] | None = None,
    need_tokens: bool = True,
) -> BenchConfig:
    """Read helexa-bench.toml (+ HELEXA_BENCH_ env overrides).

    An explicit path that doesn't exist is an error; a missing default runs on defaults.
    `need_tokens=False` for the commands that only read the store (report, serve): they never
    call a target, so an unset `token_env` is not their problem.
    """
    env = os.environ if environ is None else environ
    data, source = read_config(
        path, explicit=explicit, environ=env, prefix=ENV_PREFIX, name="helexa-bench config"
    )
    config = validate(BenchConfig, data, source)
    if need_tokens:
        require_token_envs(config.targets, "targets", source, env)
    return config
