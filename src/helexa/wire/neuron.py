"""The neuron management API as cortex (and bench) read it: lenient pydantic models.

Readers ignore unknown fields and default missing ones, so a newer or older neuron still parses
 (see docs/reference.md#endpoints-neuron).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from helexa.wire.harness import CompileMode


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class BuildInfo(_Lenient):
    package_version: str
    git_sha: str = "unknown"
    git_sha_long: str | None = None
    git_dirty: bool = False
    build_timestamp: str | None = None
    python_version: str | None = None
    torch_version: str | None = None
    transformers_version: str | None = None
    cuda_version: str | None = None
    platform: str | None = None
    features: list[str] = Field(default_factory=list)


class Device(_Lenient):
    index: int
    kind: str = "cuda"
    name: str = ""
    vram_total_mb: int = 0
    compute_capability: str | None = None


class Discovery(_Lenient):
    hostname: str | None = None
    os: str | None = None
    kernel: str | None = None
    cpu_count: int | None = None
    memory_total_mb: int | None = None
    cuda_version: str | None = None
    driver_version: str | None = None
    devices: list[Device] = Field(default_factory=list)
    harnesses: list[str] = Field(default_factory=list)
    max_prompt_tokens: int = 0
    max_output_tokens: int = 0
    cuda_unavailable_reason: str | None = None


class DeviceHealth(_Lenient):
    index: int
    kind: str = "cuda"
    name: str = ""
    vram_total_mb: int | None = None
    vram_used_mb: int | None = None
    vram_free_mb: int | None = None
    utilization_pct: int | None = None
    temperature_c: int | None = None


class ModelHealth(_Lenient):
    id: str
    status: str = "loaded"
    in_flight: int = 0
    queue_depth: int = 0


class ActivationFailure(_Lenient):
    model_id: str
    error: str = ""


class ActivationStatus(_Lenient):
    state: str = "ready"
    pending: list[str] = Field(default_factory=list)
    in_progress: str | None = None
    completed: list[str] = Field(default_factory=list)
    failed: list[ActivationFailure] = Field(default_factory=list)


class Health(_Lenient):
    status: str = "ok"
    uptime_secs: float | None = None
    devices: list[DeviceHealth] = Field(default_factory=list)
    models: list[ModelHealth] = Field(default_factory=list)
    activation: ActivationStatus = Field(default_factory=ActivationStatus)


# A prompt body larger than this many bytes per context token cannot fit whatever the tokenizer:
# a token spans at most a few dozen bytes even as JSON (\uXXXX escapes, runs of spaces), so
# cortex and neuron refuse it before any tokenization (docs/reference.md#errors).
MAX_BYTES_PER_TOKEN = 32


class Limit(_Lenient):
    context: int
    input: int | None = None
    output: int

    @property
    def prompt_bytes(self) -> int:
        """The largest request body that may still fit the context."""
        return self.context * MAX_BYTES_PER_TOKEN


class ModelInfo(_Lenient):
    id: str
    source: str | None = None
    harness: str | None = None
    quant: str | None = None
    status: str = "loaded"
    devices: list[int] = Field(default_factory=list)
    vram_used_mb: int | None = None
    capabilities: list[str] = Field(default_factory=list)
    limit: Limit | None = None
    tool_call: bool = False
    reasoning: bool = False
    loaded_at: int | None = None
    last_used_at: int | None = None
    restarts: int = 0
    placement: str | None = None  # llamacpp: where the layers went, in words
    error: str | None = None
    progress: dict[str, Any] | None = None


class LoadReply(_Lenient):
    status: str = "loaded"
    model: str | None = None
    already_loaded: bool = False
    load_secs: float | None = None
    vram_used_mb: int | None = None
    devices: list[int] = Field(default_factory=list)


class ModelSpec(_Lenient):
    """A `/models/load` request and a `[[default_models]]` entry.

    Only `model_id` is required; None means "the neuron decides" (effective harness and quant,
    most-free device, `[admission]` defaults).
    """

    model_id: str
    served_model_id: str | None = None
    harness: str | None = None
    quant: str | None = None
    tensor_parallel: int | None = Field(default=None, ge=1)
    devices: list[int] | None = None
    max_in_flight: int | None = Field(default=None, ge=1)
    max_queue_depth: int | None = Field(default=None, ge=0)
    max_wait_secs: float | None = Field(default=None, gt=0)
    # llamacpp only: the context (KV cells; else the file's trained one capped by what fits),
    # the KV cache type, and whether layers that fit no GPU may run on the CPU.
    context: int | None = Field(default=None, ge=1)
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] | None = None
    cpu_offload: bool | None = None
    # torch only: the prefix cache's budget (None: the worker's default for its device; 0 off)
    prefix_cache_mb: int | None = Field(default=None, ge=0)
    # torch only: generations decoded in one forward (None: 8), and the bound on their KV
    # (None: 90 % of the memory free after load); more wait in the worker
    max_batch: int | None = Field(default=None, ge=1)
    kv_budget_mb: int | None = Field(default=None, ge=0)
    # torch only: the compiled decode step (auto: on CUDA; true/false mean on/off)
    compile: CompileMode | None = None
