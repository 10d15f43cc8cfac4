"""models.toml: the catalogue of models cortex may place, and the aliases clients may use.

One catalogue type, shared by cortex and bench.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from helexa.config.loader import read_toml, validate
from helexa.wire.harness import CompileMode, effective_harness, normalise_quant
from helexa.wire.neuron import ModelSpec

log = logging.getLogger("helexa.config")


class Cost(BaseModel):
    model_config = ConfigDict(extra="allow")
    input: float | None = None
    output: float | None = None
    cache_read: float | None = None
    cache_write: float | None = None

    def as_wire(self) -> dict[str, float]:
        """Absent and 0.0 are distinct: only set fields appear."""
        return {k: v for k, v in self.model_dump().items() if v is not None and k in _COST_KEYS}


_COST_KEYS = ("input", "output", "cache_read", "cache_write")


class ModelProfile(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    harness: Literal["torch", "candle", "llamacpp"] = "torch"
    quant: str | None = None
    source: str | None = None
    path: str | None = None
    vram_mb: int | None = Field(default=None, ge=0)
    min_devices: int = Field(default=1, ge=1)
    min_device_vram_mb: int | None = Field(default=None, ge=0)
    pinned_on: list[str] = Field(default_factory=list)
    residency_priority: int = 100
    capabilities: list[str] = Field(default_factory=list)
    cost: Cost | None = None
    limit: dict[str, object] | None = None  # `context`: the llamacpp context; else ignored
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] | None = None  # llamacpp only
    cpu_offload: bool = False  # llamacpp only: layers that fit no GPU run on the CPU
    prefix_cache_mb: int | None = None  # torch only: KV of recent sequences; 0 off
    max_batch: int | None = None  # torch only: generations decoded in one forward
    kv_budget_mb: int | None = None  # torch only: bound on those generations' KV
    compile: CompileMode | None = None  # torch only: auto | on | off (true/false: on/off)
    # Checked by the ModelSpec they become, so cortex and neuron agree on what is valid.
    max_in_flight: int | None = None
    max_queue_depth: int | None = None
    max_wait_secs: float | None = None
    keep_alive_secs: float | None = None

    @field_validator("harness", mode="after")
    @classmethod
    def _candle_is_torch(cls, v: str) -> str:
        return effective_harness(v)

    @model_validator(mode="after")
    def _source_xor_path(self) -> ModelProfile:
        if self.source and self.path:
            raise ValueError("set either 'source' or 'path', not both")
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError("'path' must be absolute")
        normalise_quant(self.quant, self.harness)  # the neuron would refuse every load of it
        try:
            self.load_spec([])
        except ValidationError as e:
            err = e.errors()[0]
            raise ValueError(f"'{err['loc'][0]}' {err['msg'].lower()}") from None
        return self

    def load_id(self) -> str:
        """What the neuron fetches."""
        if self.path:
            return self.path
        if self.source:
            return f"{self.source}:{self.id}"
        return self.id

    def load_spec(self, devices: list[int]) -> ModelSpec:
        """The ModelSpec cortex sends for a cold load on `devices`; the neuron validates it
        with the same model, so an entry this accepts is never refused there as invalid."""
        return ModelSpec(
            model_id=self.load_id(),
            served_model_id=self.id,
            harness=self.harness,
            quant=self.quant,
            devices=devices,
            tensor_parallel=self.min_devices if self.min_devices > 1 else None,
            max_in_flight=self.max_in_flight,
            max_queue_depth=self.max_queue_depth,
            max_wait_secs=self.max_wait_secs,
            prefix_cache_mb=self.prefix_cache_mb,
            max_batch=self.max_batch,
            kv_budget_mb=self.kv_budget_mb,
            compile=self.compile,
            **self._llamacpp_fields(),
        )

    def _llamacpp_fields(self) -> dict[str, Any]:
        if self.harness != "llamacpp":
            return {}
        context = (self.limit or {}).get("context")
        return {
            "context": context if isinstance(context, int) else None,
            "kv_cache_type": self.kv_cache_type,
            "cpu_offload": self.cpu_offload,
        }


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="allow")

    models: list[ModelProfile] = Field(default_factory=list)
    aliases: dict[str, str] = Field(default_factory=dict)
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    _by_id: dict[str, ModelProfile] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _unique(self) -> Catalogue:
        for m in self.models:
            if m.id in self._by_id:
                raise ValueError(f"duplicate model id '{m.id}'")
            self._by_id[m.id] = m
        for alias in self.aliases:
            if alias in self._by_id:
                raise ValueError(f"alias '{alias}' equals a catalogue model id")
        for primary, chain in self.fallbacks.items():
            self._check_chain(primary, chain)
        return self

    def _check_chain(self, primary: str, chain: list[str]) -> None:
        """A chain hangs off a concrete id and names other models, each once."""
        where = f"fallbacks for '{primary}'"
        if primary in self.aliases:
            raise ValueError(f"{where}: key an alias's target ('{self.aliases[primary]}')")
        seen = {primary}
        for name in chain:
            target = self.resolve_alias(name)
            if not target:
                raise ValueError(f"{where}: an entry is empty")
            if target in seen:
                raise ValueError(f"{where}: '{name}' repeats the model or an earlier fallback")
            seen.add(target)

    def get(self, model_id: str) -> ModelProfile | None:
        return self._by_id.get(model_id)

    def resolve_alias(self, requested: str) -> str:
        """One flat lookup, no chaining (see docs/reference.md#routing)."""
        return self.aliases.get(requested, requested)

    def adopt(self, other: Catalogue) -> None:
        """Take a reloaded catalogue's contents in place: every holder sees them at once, and
        a request that already resolved its profile keeps it."""
        self.models, self.aliases, self.fallbacks = other.models, other.aliases, other.fallbacks
        self._by_id = other._by_id


def load_catalogue(path: Path) -> Catalogue:
    """A missing file is an empty catalogue (warned); an invalid one is a ConfigError."""
    if not path.exists():
        log.warning("models catalogue %s not found; starting with an empty catalogue", path)
        return Catalogue()
    return validate(Catalogue, read_toml(path), str(path))
