"""The worker's load spec and what it reads from a model directory, without importing torch.

The daemon resolves a model id to a local directory (hub snapshot or path) and sends it in the
`load` frame; everything here can be checked before the worker pays for `import torch`, so a bad
spec fails in milliseconds.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from helexa.neuron.engine.errors import LoadError
from helexa.neuron.gguf_files import local_gguf
from helexa.wire.errors import ApiError
from helexa.wire.harness import QuantRefused, compile_mode, normalise_quant

log = logging.getLogger("helexa.neuron.engine")

_TEST_FAULTS_ENV = "HELEXA_TEST_FAULTS"


@dataclass(slots=True)
class FaultPlan:
    """Fault injection for tests; honoured only when HELEXA_TEST_FAULTS=1 in the worker's env.

    Steps count per request from 0 (the token sampled from the prefill logits).
    """

    non_finite_at_step: int | None = None  # poison the logits → `fault` frame, exit 1
    exit_at_step: int | None = None  # SIGKILL itself mid-stream (a crash, no frame)
    arm_file: str | None = None  # if set, step faults fire only while this file exists,
    # and firing deletes it: one-shot across restarts
    load_delay_secs: float = 0.0  # sleep before loading (to observe `loading`)
    step_delay_secs: float = 0.0  # sleep before every decode step (slow streams)
    script_text: str | None = None  # every request "samples" these tokens, then EOS
    script_ids: list[int] | None = None
    compile_fails: bool = False  # torch.compile of the decode step raises

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> FaultPlan:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise LoadError(400, "invalid_value", f"unknown test_faults keys: {sorted(unknown)}")
        return cls(**dict(d))


@dataclass(slots=True)
class LoadSpec:
    """The `spec` of the `load` frame (documented in protocol.py)."""

    path: str
    served_id: str
    harness: str = "torch"
    quant: str | None = None
    device: str = "cpu"
    devices: list[int] = field(default_factory=lambda: [0])
    max_prompt_tokens: int | None = None
    max_output_tokens: int | None = None
    static_cache: bool | None = None
    prefix_cache_mb: int | None = None  # torch: None → torch_prefix.DEFAULT_MB for the device
    max_batch: int = 8  # torch: generations decoded together (more wait in the worker)
    kv_budget_mb: int | None = None  # torch: their KV's bound; None → measured free memory
    compile: str = "auto"  # auto | on | off (torch_compile.wanted)
    # llamacpp: the GGUF file(s) (split shards in order; the first is opened), the context
    # (KV cells shared by all sequences), layers on the GPUs (-1 all) and their split
    gguf_files: list[str] = field(default_factory=list)
    n_ctx: int | None = None
    n_gpu_layers: int | None = None
    tensor_split: list[float] | None = None
    kv_cache_type: str = "f16"
    n_threads: int | None = None
    test_faults: FaultPlan | None = None

    @classmethod
    def from_frame(
        cls, spec: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> LoadSpec:
        env = os.environ if environ is None else environ
        if not isinstance(spec, Mapping):
            raise LoadError(400, "invalid_value", "load spec must be an object")
        path = spec.get("path")
        served = spec.get("served_id") or path
        if not isinstance(path, str) or not path:
            raise LoadError(400, "invalid_value", "load spec needs a 'path'")
        faults = None
        raw_faults = spec.get("test_faults")
        if raw_faults and env.get(_TEST_FAULTS_ENV) == "1":
            faults = FaultPlan.parse(raw_faults)
        devices = spec.get("devices") or [0]
        out = cls(
            path=path,
            served_id=str(served),
            harness=str(spec.get("harness") or "torch"),
            quant=spec.get("quant"),
            device=str(spec.get("device") or "cpu"),
            devices=[int(d) for d in devices],
            max_prompt_tokens=_opt_int(spec, "max_prompt_tokens"),
            max_output_tokens=_opt_int(spec, "max_output_tokens"),
            static_cache=spec.get("static_cache"),
            prefix_cache_mb=_opt_int(spec, "prefix_cache_mb"),
            max_batch=_opt_int(spec, "max_batch") or 8,
            kv_budget_mb=_opt_int(spec, "kv_budget_mb"),
            compile=_compile(spec.get("compile")),
            gguf_files=[str(f) for f in spec.get("gguf_files") or []],
            n_ctx=_opt_int(spec, "n_ctx"),
            n_gpu_layers=_opt_int(spec, "n_gpu_layers"),
            tensor_split=[float(x) for x in spec["tensor_split"]]
            if spec.get("tensor_split")
            else None,
            kv_cache_type=str(spec.get("kv_cache_type") or "f16"),
            n_threads=_opt_int(spec, "n_threads"),
            test_faults=faults,
        )
        out.check()
        return out

    def wire(self) -> dict[str, Any]:
        """The spec as the `load` frame carries it."""
        out = asdict(self)
        if self.test_faults is None:
            del out["test_faults"]
        return out

    def check(self) -> None:
        """The cheap checks, before torch is imported."""
        try:
            self.quant = normalise_quant(self.quant, self.harness)
        except QuantRefused as e:
            raise LoadError(400, "unsupported_quant", str(e)) from None
        if self.device not in ("cpu", "cuda"):
            raise LoadError(400, "invalid_devices", f"device kind '{self.device}' is not known")
        if self.max_batch < 1 or (self.kv_budget_mb or 0) < 0:
            raise LoadError(400, "invalid_value", "max_batch must be >= 1, kv_budget_mb >= 0")
        if self.harness == "llamacpp":
            self._check_gguf()
            return
        p = Path(self.path)
        if not p.is_dir() or not (p / "config.json").is_file():
            raise LoadError(
                404,
                "model_source_not_found",
                f"model '{self.served_id}' was not found at {self.path}",
            )

    def _check_gguf(self) -> None:
        if self.kv_cache_type not in GGUF_KV_TYPES:
            raise LoadError(
                400,
                "invalid_value",
                f"kv_cache_type '{self.kv_cache_type}' is not one of {list(GGUF_KV_TYPES)}",
            )
        if not self.gguf_files and Path(self.path).exists():
            try:
                found = local_gguf(Path(self.path), self.quant, self.served_id)
            except ApiError as e:
                raise LoadError(e.status, e.code or "invalid_value", e.message) from None
            self.gguf_files = [str(f) for f in found]
        missing = [f for f in self.gguf_files if not Path(f).is_file()]
        if not self.gguf_files or missing:
            raise LoadError(
                404,
                "model_source_not_found",
                f"model '{self.served_id}': no GGUF file at {(missing or [self.path])[0]}",
            )


GGUF_KV_TYPES = ("f16", "q8_0", "q4_0")


def _compile(value: object) -> str:
    try:
        return compile_mode(value)
    except ValueError as e:
        raise LoadError(400, "invalid_value", str(e)) from None


def _opt_int(spec: Mapping[str, Any], key: str) -> int | None:
    v = spec.get(key)
    return None if v is None else int(v)


def _read_json(p: Path) -> dict[str, Any]:
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True, slots=True)
class Pooling:
    """Sentence-embedding pooling: modes in sentence-transformers' concatenation order."""

    modes: tuple[str, ...] = ("lasttoken",)
    normalize: bool = True


_ST_MODES = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
)
_MODE_ALIASES = {
    "mean_tokens": "mean",
    "cls_token": "cls",
    "max_tokens": "max",
    "last": "lasttoken",
}


class ModelDir:
    """The JSON files of a hub-style model directory that the engine needs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = _read_json(self.path / "config.json")
        self.generation_config = _read_json(self.path / "generation_config.json")
        self.tokenizer_config = _read_json(self.path / "tokenizer_config.json")

    def weight_bytes(self) -> int:
        return sum(
            f.stat().st_size
            for pat in ("*.safetensors", "*.bin")
            for f in self.path.glob(pat)
            if f.is_file()
        )

    def sentence_pooling(self) -> Pooling | None:
        """The sentence-transformers pooling when modules.json lists a Pooling module."""
        modules = self.path / "modules.json"
        if not modules.is_file():
            return None
        try:
            entries = json.loads(modules.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entries, list):
            return None
        pool_dir: str | None = None
        normalize = False
        for e in entries:
            if not isinstance(e, dict):
                continue
            kind = str(e.get("type", ""))
            if kind.endswith(".Pooling"):
                pool_dir = str(e.get("path", ""))
            elif kind.endswith(".Normalize"):
                normalize = True
            elif not kind.endswith(".Transformer"):
                log.warning("sentence-transformers module %s is not applied", kind)
        if pool_dir is None:
            return None
        cfg = _read_json(self.path / pool_dir / "config.json")
        modes: list[str] = []
        if isinstance(cfg.get("pooling_mode"), str):
            m = cfg["pooling_mode"]
            modes.append(_MODE_ALIASES.get(m, m))
        else:
            modes = [name for key, name in _ST_MODES if cfg.get(key)]
        return Pooling(tuple(modes or ["mean"]), normalize)

    def eos_ids(self, token_to_id: Any) -> list[int]:
        """generation_config eos ids ∪ config eos ids ∪ the tokenizer's eos token."""
        ids: set[int] = set()
        text_cfg = self.config.get("text_config")
        for src in (
            self.generation_config,
            self.config,
            text_cfg if isinstance(text_cfg, dict) else {},
        ):
            v = src.get("eos_token_id")
            if isinstance(v, int):
                ids.add(v)
            elif isinstance(v, list):
                ids.update(x for x in v if isinstance(x, int))
        eos = self.tokenizer_config.get("eos_token")
        if isinstance(eos, dict):
            eos = eos.get("content")
        if isinstance(eos, str) and eos:
            tid = token_to_id(eos)
            if isinstance(tid, int):
                ids.add(tid)
        return sorted(ids)
