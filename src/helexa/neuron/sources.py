"""From a load spec to a local model directory (see docs/reference.md#endpoints-neuron).

Two jobs, both before any worker starts so a bad request fails fast and cheaply:

- `resolve_spec` checks a ModelSpec (id grammar, source scheme, harness, quant, devices,
  tensor_parallel) and returns the effective values, raising the exact load errors;
- `fetch_model` turns the id into a directory: an absolute path as is, a hub repo through
  `huggingface_hub.snapshot_download` of only the files the engine needs, into the HF cache.

The 507 pre-check's weight estimate lives in weights.py. Everything here is blocking (hub I/O, file
reads): the daemon calls it through `asyncio.to_thread`. Never imports torch.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helexa.neuron.download_progress import ProgressFn, Reporter, dir_bytes, progress_class
from helexa.neuron.gguf_files import is_gguf, local_gguf, select_gguf
from helexa.neuron.gguf_meta import GgufError, header_bytes
from helexa.neuron.weights import SAFETENSORS_INDEX
from helexa.wire.advice import get_model_advice
from helexa.wire.errors import ApiError
from helexa.wire.harness import QuantRefused, effective_harness, normalise_quant
from helexa.wire.modelid import DEFAULT_SOURCE, ModelId, parse_model_id
from helexa.wire.neuron import ModelSpec

log = logging.getLogger("helexa.neuron.sources")

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
# What the engine needs from a repo: metadata first, then the weights it names.
META_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "additional_chat_templates/*.jinja",
    "*.safetensors.index.json",
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
]

# ---- spec validation -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResolvedSpec:
    """A validated load request. `quant` None means "choose by device" (`default_quant`);
    `devices` None means "the device with the most free memory"."""

    spec: ModelSpec
    source: ModelId  # scheme filled in (or a path)
    served_id: str
    harness: str
    quant: str | None
    devices: list[int] | None

    @property
    def source_str(self) -> str:
        """ModelInfo `source`: `scheme:org/name` or the path."""
        return self.source.qualified()


def resolve_spec(
    spec: ModelSpec,
    *,
    sources: Mapping[str, str],
    default_source: str = DEFAULT_SOURCE,
    harnesses: Sequence[str] = ("torch",),
    device_count: int = 1,
) -> ResolvedSpec:
    """Check everything that can be checked without I/O, in a fixed order."""
    mid = parse_model_id(spec.model_id, sources, default_source)
    harness_asked = spec.harness
    if mid.is_path and mid.path is not None and mid.path.lower().endswith(".gguf"):
        harness_asked = "llamacpp"  # a GGUF file needs llamacpp [W2]
    harness = check_harness(harness_asked, harnesses)
    quant = check_quant(spec.quant, harness)
    devices = check_devices(spec.devices, device_count)
    if harness != "llamacpp":  # llamacpp splits a model over devices by layer
        check_tensor_parallel(spec.tensor_parallel)
    return ResolvedSpec(
        spec=spec,
        source=mid.with_default_scheme(default_source),
        served_id=mid.served_id(spec.served_model_id),
        harness=harness,
        quant=quant,
        devices=devices,
    )


def check_harness(harness: str | None, available: Sequence[str]) -> str:
    """The effective harness (`candle` is `torch`); `400 unsupported_harness` if not here."""
    name = effective_harness(harness)
    if name not in available:
        shown = ", ".join(available) or "none"
        raise ApiError(
            400,
            "unsupported_harness",
            f"harness '{harness or name}' is not available on this neuron (available: {shown})",
        )
    return name


def check_quant(quant: str | None, harness: str = "torch") -> str | None:
    """Normalise a quant for `harness`, or `400 unsupported_quant` saying what to use."""
    try:
        return normalise_quant(quant, harness)
    except QuantRefused as e:
        raise ApiError(400, "unsupported_quant", str(e)) from None


def check_devices(devices: Sequence[int] | None, device_count: int) -> list[int] | None:
    """Indices must exist here; duplicates collapse; empty means "choose for me"."""
    if not devices:
        return None
    out: list[int] = []
    for i in devices:
        if not 0 <= i < device_count:
            raise ApiError(400, "invalid_devices", f"device index {i} does not exist on this host")
        if i not in out:
            out.append(i)
    return out


def check_tensor_parallel(tp: int | None) -> None:
    if tp is not None and tp > 1:
        raise ApiError(
            400,
            "unsupported_parameter",
            "tensor_parallel > 1 is not supported yet",
            param="tensor_parallel",
        )


# ---- fetching ----------------------------------------------------------------------------------


def endpoint_for(
    scheme: str, sources: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> str:
    """The HF-compatible base URL of a scheme; `huggingface` is HF_ENDPOINT or huggingface.co
    unless `[sources]` names it."""
    env = os.environ if environ is None else environ
    if scheme in sources:
        return sources[scheme].rstrip("/")
    if scheme == DEFAULT_SOURCE:
        return (env.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")
    raise ApiError(400, "unknown_source", f"model source scheme '{scheme}' is not configured")


def token_for(
    scheme: str,
    sources: Mapping[str, str],
    token_envs: Mapping[str, str],
    environ: Mapping[str, str],
) -> str | bool | None:
    """The token a source gets: its own `token_env`, HF_TOKEN (or huggingface_hub's stored login,
    `None`) for the built-in Hugging Face source only, else `False`, which stops
    huggingface_hub from sending HF_TOKEN anyway to a registry the operator never vouched for."""
    var = token_envs.get(scheme)
    if var:
        return environ.get(var) or False
    if scheme == DEFAULT_SOURCE and scheme not in sources:
        return environ.get("HF_TOKEN") or None
    return False


def check_model_root(path: str, roots: Sequence[str] | None, label: str) -> None:
    """`403 model_path_not_allowed` unless `path` (symlinks resolved) lies under one of `roots`;
    `None` allows any path."""
    if roots is None:
        return
    real = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(root)
        if real == base or real.startswith(base.rstrip("/") + "/"):
            return
    raise ApiError(
        403,
        "model_path_not_allowed",
        f"model '{label}' is not under an allowed model root (allowed_model_roots)",
    )


def cache_dir_for(scheme: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    """The hub cache is keyed by repo only, so every non-HF source gets its own subfolder:
    `helexa:Qwen/X` and `Qwen/X` may be different bytes."""
    if cache_dir is None:
        from huggingface_hub import constants

        base = Path(constants.HF_HUB_CACHE)
    else:
        base = Path(cache_dir).expanduser()
    return base if scheme == DEFAULT_SOURCE else base / f"source--{scheme}"


def _truthy(v: str | None) -> bool:
    return (v or "").strip().lower() in {"1", "true", "yes", "on"}


def fetch_model(
    mid: ModelId,
    *,
    sources: Mapping[str, str],
    cache_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
    label: str | None = None,
    token_envs: Mapping[str, str] | None = None,
    roots: Sequence[str] | None = None,
    gguf: bool = False,
    quant: str | None = None,
) -> Path:
    """A local directory holding the model: the path itself, or a hub snapshot. With `gguf`
    (the llamacpp harness; implied by a `.gguf` path), the first GGUF file instead, its split
    siblings fetched with it; `quant` picks the file (gguf_files.select_gguf).

    `mid` must be resolved (scheme set, see `ResolvedSpec.source`). `label` (default: the id as
    the client wrote it) is what messages quote. Errors: 404 `model_source_not_found` (missing
    path, unknown repo, or not cached while offline / the hub is unreachable), 502
    `download_failed`; 403 `model_path_not_allowed` (a path outside `roots`); 400
    `ambiguous_gguf`.
    """
    label = label or mid.label
    if mid.path is not None:
        if gguf or is_gguf(mid.path):
            check_model_root(mid.path, roots, label)
            if not Path(mid.path).exists():
                raise _not_found(label, mid.path)
            return local_gguf(Path(mid.path), quant, label)[0]
        return _local_dir(mid.path, label, roots)
    hub = _Hub(mid, label, sources, cache_dir, environ, token_envs)
    started = time.monotonic()
    if gguf:
        shards = select_gguf(hub.list_files(), quant, label)
        root = _download(hub, shards, label, progress) / shards[0]
    else:
        root = hub.snapshot(META_PATTERNS)
        if not (root / "config.json").is_file():
            raise hub.ctx.not_found(f"{hub.endpoint}/{mid.repo} (the repo has no config.json)")
        root = _download(hub, weight_patterns(root), label, progress)
    log.info("model %s ready at %s (%.1fs)", label, root, time.monotonic() - started)
    return root


def _download(hub: _Hub, patterns: list[str], label: str, progress: ProgressFn | None) -> Path:
    reporter = Reporter(label, progress)
    root = hub.snapshot(patterns, progress_class(reporter))
    reporter.finish(dir_bytes(root, patterns))
    return root


def fetch_tokenizer(
    mid: ModelId,
    *,
    sources: Mapping[str, str],
    cache_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    label: str | None = None,
    token_envs: Mapping[str, str] | None = None,
    roots: Sequence[str] | None = None,
    quant: str | None = None,
) -> Path:
    """Like `fetch_model` but only the metadata (config, tokenizer, chat template): enough for
    `/tokenize` on a model that isn't loaded, never the weights. A GGUF repo (no
    tokenizer.json): the head of the file `quant` picks, up to the end of its metadata."""
    label = label or mid.label
    if mid.path is not None:
        return _local_dir(mid.path, label, roots)
    hub = _Hub(mid, label, sources, cache_dir, environ, token_envs)
    root = hub.snapshot(META_PATTERNS)
    if (root / "tokenizer.json").is_file():
        return root
    # A GGUF repo has neither config.json nor tokenizer.json: look for its files.
    has_config = (root / "config.json").is_file()
    ggufs = [] if has_config else [f for f in hub.list_files() if is_gguf(f)]
    if not ggufs:
        raise hub.ctx.not_found(f"{hub.endpoint}/{mid.repo} (the repo has no tokenizer.json)")
    return hub.gguf_header(select_gguf(ggufs, quant, label)[0])


class _Hub:
    """One repo on one HF-compatible endpoint, with the env's offline mode and the token that
    endpoint may see (`token_for`)."""

    def __init__(
        self,
        mid: ModelId,
        label: str,
        sources: Mapping[str, str],
        cache_dir: str | os.PathLike[str] | None,
        environ: Mapping[str, str] | None,
        token_envs: Mapping[str, str] | None,
    ) -> None:
        env = os.environ if environ is None else environ
        scheme = mid.scheme or DEFAULT_SOURCE
        self.mid = mid
        self.endpoint = endpoint_for(scheme, sources, env)
        self.cache = cache_dir_for(scheme, cache_dir)
        self.offline = _truthy(env.get("HF_HUB_OFFLINE")) or _hub_offline_constant()
        self.token = token_for(scheme, sources, token_envs or {}, env)
        self.ctx = _FetchContext(mid, label, self.endpoint, self.cache, self.offline)

    def snapshot(self, patterns: list[str], tqdm_class: type | None = None) -> Path:
        import huggingface_hub

        kwargs: dict[str, Any] = {}
        if tqdm_class is not None:
            kwargs["tqdm_class"] = tqdm_class
        try:
            path = huggingface_hub.snapshot_download(
                self.mid.repo,
                endpoint=self.endpoint,
                cache_dir=str(self.cache),
                token=self.token,
                allow_patterns=patterns,
                local_files_only=self.offline,
                **kwargs,
            )
        except Exception as e:
            raise self.ctx.map_error(e) from e
        return Path(path)

    def gguf_header(self, name: str) -> Path:
        """A local `.gguf` holding only the metadata of the repo's file `name` (read with HTTP
        range requests; the whole file when it is cached)."""
        safe = f"{self.mid.repo}--{name}".replace("/", "--")
        dest = self.cache / "helexa-gguf-headers" / safe
        if dest.is_file():
            return dest
        if self.offline:
            return self.snapshot([name]) / name
        import huggingface_hub

        try:
            fs = huggingface_hub.HfFileSystem(endpoint=self.endpoint, token=self.token)
            with fs.open(f"{self.mid.repo}/{name}", "rb") as f:
                head = header_bytes(f, name)
        except GgufError:
            raise
        except Exception as e:
            raise self.ctx.map_error(e) from e
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        tmp.write_bytes(head)
        os.replace(tmp, dest)
        return dest

    def list_files(self) -> list[str]:
        """The repo's file names (the cached ones when offline)."""
        if self.offline:
            root = self.snapshot(["*.gguf"])
            return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
        import huggingface_hub

        try:
            api = huggingface_hub.HfApi(endpoint=self.endpoint, token=self.token)
            return list(api.list_repo_files(self.mid.repo))
        except Exception as e:
            raise self.ctx.map_error(e) from e


def weight_patterns(root: Path) -> list[str]:
    """The shards an index names, else every top-level `*.safetensors`."""
    index = root / SAFETENSORS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            return sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("%s is unreadable; fetching every *.safetensors", index)
    return ["*.safetensors"]


def _local_dir(path: str, label: str, roots: Sequence[str] | None) -> Path:
    check_model_root(path, roots, label)
    p = Path(path)
    if not p.exists():
        raise _not_found(label, path)
    if p.is_file():
        raise _not_found(label, f"{path} (expected a model directory)")
    if not (p / "config.json").is_file():
        raise _not_found(label, f"{path} (no config.json there)")
    return p


def _not_found(label: str, where: str) -> ApiError:
    return ApiError(404, "model_source_not_found", f"model '{label}' was not found at {where}")


def _hub_offline_constant() -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - the neuron extra ships it
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _is_network_error(e: BaseException) -> bool:
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    return type(e).__module__.split(".")[0] in {"httpx", "httpx2", "requests", "urllib3"}


class _FetchContext:
    """Turns huggingface_hub's exceptions into load-error replies."""

    def __init__(self, mid: ModelId, label: str, endpoint: str, cache: Path, offline: bool):
        self.mid, self.label, self.endpoint, self.cache, self.offline = (
            mid,
            label,
            endpoint,
            cache,
            offline,
        )

    def not_found(self, where: str) -> ApiError:
        return _not_found(self.label, where)

    def how_to_fix(self) -> str:
        endpoint = None if self.endpoint == HF_DEFAULT_ENDPOINT else self.endpoint
        return get_model_advice(self.mid.repo, cache_dir=str(self.cache), endpoint=endpoint)

    def failed(self, reason: str) -> ApiError:
        return ApiError(
            502,
            "download_failed",
            f"downloading '{self.label}' from {self.endpoint} failed: {reason}",
        )

    def map_error(self, e: Exception) -> ApiError:
        from huggingface_hub import errors as hf

        if isinstance(e, ApiError):
            return e
        if isinstance(e, hf.GatedRepoError):
            return self.failed("the repo is gated; accept its terms on the hub and set HF_TOKEN")
        if isinstance(e, (hf.RepositoryNotFoundError, hf.RevisionNotFoundError)):
            return self.not_found(self.endpoint)
        if isinstance(e, hf.RemoteEntryNotFoundError):
            return self.not_found(f"{self.endpoint}/{self.mid.repo} (a file is missing)")
        offline = self.offline or isinstance(e, hf.OfflineModeIsEnabled)
        cause = e.__cause__
        if isinstance(e, (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled)):
            if offline:
                return self.not_found(
                    f"{self.cache} (HF_HUB_OFFLINE is set and it is not cached; "
                    f"{self.how_to_fix()})"
                )
            if isinstance(cause, hf.HfHubHTTPError):
                return self.failed(_http_reason(cause))
            return self.not_found(
                f"{self.cache} ({self.endpoint} is unreachable and it is not cached; "
                f"{self.how_to_fix()})"
            )
        if isinstance(e, hf.HfHubHTTPError):
            return self.failed(_http_reason(e))
        if _is_network_error(e) or isinstance(e, OSError):
            return self.failed(f"{type(e).__name__}: {str(e)[:200]}")
        raise e


def _http_reason(e: Exception) -> str:
    status = getattr(getattr(e, "response", None), "status_code", None)
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return f"HTTP {status}: {first}" if status else first
