"""The files `helexa up` owns: commented defaults on the first run, appended entries later.

The files are meant to be read and edited by people, so their text is never regenerated: the first
run writes them from templates (mode 0600: they hold the node token), and a later `--model` adds a
text block for each entry that is missing, leaving comments and hand edits alone. Every write is
atomic (temp file, fsync, rename), so a full disk never leaves an empty file behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helexa.wire.errors import ApiError
from helexa.wire.modelid import parse_model_id

LOCAL_NODE = "local"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 31313
DEFAULT_METRICS_PORT = 31314
DEFAULT_NEURON_PORT = 13131

# Real Qwen3 hub ids, smallest first; vram_mb is a bf16 placement estimate that cortex refines
# with measured values once a model has been loaded.
DEFAULT_MODELS: tuple[tuple[str, int], ...] = (
    ("Qwen/Qwen3-0.6B", 1600),
    ("Qwen/Qwen3-4B", 8800),
    ("Qwen/Qwen3-8B", 17500),
)
DEFAULT_ALIASES = {
    "helexa/small": "Qwen/Qwen3-0.6B",
    "helexa/balanced": "Qwen/Qwen3-4B",
    "helexa/large": "Qwen/Qwen3-8B",
}


class UpConfigError(Exception):
    """A bad --model or an unreadable file: the CLI exits 2 with this text."""


def default_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "helexa"


def q(s: str) -> str:
    """A TOML basic string (JSON's escaping is a subset of TOML's)."""
    return json.dumps(s, ensure_ascii=False)


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def url_host(host: str) -> str:
    """Where a client on this machine reaches a listener bound to `host`."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class ModelArg:
    """One `--model`: what the catalogue and the neuron's [[default_models]] get."""

    served_id: str
    load_id: str  # model_id for the neuron: the path, or the hub id as given
    path: str | None = None
    source: str | None = None
    harness: str | None = None  # "llamacpp" for a GGUF file


def parse_model_arg(raw: str) -> ModelArg:
    """A path (absolute, relative, `~`, or anything that exists) or a hub id (`org/name`,
    `scheme:org/name`). Relative paths are made absolute: the children run elsewhere."""
    expanded = os.path.expanduser(raw)
    if raw.startswith(("/", ".", "~")) or os.path.exists(expanded):
        path = os.path.abspath(expanded)
        if not os.path.exists(path):
            raise UpConfigError(f"--model {raw}: {path} does not exist")
        mid = parse_model_id(path)
        harness = "llamacpp" if path.lower().endswith(".gguf") else None
        if harness and importlib.util.find_spec("llama_cpp") is None:
            raise UpConfigError(
                f"--model {raw}: GGUF files need the llama.cpp harness: "
                "pip install 'helexa[llamacpp]' (the README says how to build it for CUDA)"
            )
        return ModelArg(served_id=mid.served_id(), load_id=path, path=path, harness=harness)
    try:
        mid = parse_model_id(raw)
    except ApiError as e:
        raise UpConfigError(f"--model {raw}: {e.message}") from None
    return ModelArg(served_id=mid.repo, load_id=raw, source=mid.scheme)


# ---- templates ---------------------------------------------------------------------------------


def cortex_toml(
    host: str,
    port: int,
    metrics_port: int,
    neuron_url: str,
    token: str,
    api_key: str,
    admin_key: str,
) -> str:
    return f"""\
# cortex.toml, written by `helexa up` (more keys: the README's "Configuration" section).
# Edit freely: `helexa up` only ever appends to models.toml and neuron.toml, and never rewrites
# this file. The same file runs a gateway on its own: `cortex serve --config {{this file}}`.
# `helexa up --host/--port/--metrics-port/--neuron-port` override the addresses below.

models_config = "models.toml"         # the catalogue; relative to this file

[gateway]
listen = {q(host_port(host, port))}
# Prometheus: GET /metrics. Its series name keys and accounts: loopback unless you mean it.
metrics_listen = {q(host_port(DEFAULT_HOST, metrics_port))}
# cors_origins = ["https://app.example"]   # web pages allowed to call the API (none by default)
# poll_interval_secs = 5              # how often each neuron is polled
# request_timeout_secs = 300
# cold_load_timeout_secs = 1800       # first use of a model may download it
shutdown_grace_secs = 30              # Ctrl-C: in-flight requests get this long to finish

# [eviction]
# strategy = "lru"                    # or "priority" (residency_priority in models.toml)

# One [[neurons]] block per GPU host. To grow to several hosts, run `neuron serve` on each
# (with the same [auth] token, or its own) and add a block here, e.g.
#   [[neurons]]
#   name = "beast"
#   endpoint = "http://beast.lan:13131"
#   token = "…the token in beast's neuron.toml…"
[[neurons]]
name = {q(LOCAL_NODE)}
endpoint = {q(neuron_url)}
token = {q(token)}                    # must equal [auth] token in neuron.toml

# API keys. Every request must send one (`Authorization: Bearer <key>`); `helexa up` refuses a
# non-loopback --host if require_auth is turned off. Add a block per person or app: usage is
# metered per key (cortex_spend_* metrics), hard_cap limits it. An admin key may also load and
# unload models and read /api/fleet and every key's /api/history (the dashboard needs one).
[entitlements]
require_auth = true

[[entitlements.keys]]
key = {q(api_key)}
account_id = "local"

[[entitlements.keys]]
key = {q(admin_key)}
account_id = "local"
key_id = "admin"
admin = true
"""


def models_toml() -> str:
    blocks = "".join(
        f"""
[[models]]
id = {q(mid)}
vram_mb = {mb}                        # placement estimate; measured values refine it
"""
        for mid, mb in DEFAULT_MODELS
    )
    aliases = "".join(f"{q(a)} = {q(t)}\n" for a, t in DEFAULT_ALIASES.items())
    return f"""\
# models.toml, the catalogue, written by `helexa up` (example: the README's "Configuration").
# A model listed here is loaded on first use (downloaded from the Hugging Face hub if it is not
# cached yet); `helexa up --model ID_OR_PATH` appends entries at the end of this file.
# Keys: id, path (absolute local dir or .gguf file), source, harness ("llamacpp" for GGUF),
# quant (a GGUF repo's file: "Q4_K_M"), vram_mb, min_device_vram_mb, pinned_on,
# residency_priority, capabilities, cost = {{ input = 0.0, output = 0.0 }}.
{blocks}
# Aliases clients may send as `model`.
[aliases]
{aliases}"""


def neuron_toml(host: str, neuron_port: int, token: str) -> str:
    return f"""\
# neuron.toml, written by `helexa up`: the daemon that loads models and runs inference on this
# machine. `helexa up --model` appends [[default_models]] entries below.

listen = {q(host_port(host, neuron_port))}
bind_url = {q(f"http://{url_host(host)}:{neuron_port}")}
# cache_dir = "~/.cache/huggingface/hub"   # where hub models are downloaded
# cpu_memory_mb = 16000                # memory models may use on a CPU-only host (75 % of RAM)
# max_prompt_tokens = 16384
# max_output_tokens = 8192
# A model's advertised limit splits its context so both fit: a 40k model reports input 16384 and
# output 8192; an 8k model, where the two don't fit, reports 4096 and 4096.
shutdown_grace_secs = 30

[auth]
token = {q(token)}   # cortex sends it; must equal the token in cortex.toml

# [admission]                          # per-model defaults
# max_in_flight = 8                    # generations decoded together (torch batches up to 8)
# max_queue_depth = 16
# max_wait_secs = 120

# Models loaded at start, in order (pre-warm). Each is one block:
#   [[default_models]]
#   model_id = "Qwen/Qwen3-0.6B"       # a hub id, or an absolute path to a model directory
"""


def catalogue_block(m: ModelArg) -> str:
    lines = [f"\n[[models]]  # added by helexa up --model\nid = {q(m.served_id)}\n"]
    if m.path:
        lines.append(f"path = {q(m.path)}\n")
    if m.source:
        lines.append(f"source = {q(m.source)}\n")
    if m.harness:
        lines.append(f"harness = {q(m.harness)}\n")
    return "".join(lines)


def default_model_block(m: ModelArg) -> str:
    text = f"\n[[default_models]]  # added by helexa up --model\nmodel_id = {q(m.load_id)}\n"
    return text + (f"harness = {q(m.harness)}\n" if m.harness else "")


# ---- files -------------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """Temp file in the same directory, fsync, rename: a full disk or a crash mid-write leaves
    the old file (or none), never an empty or half one. Mode 0600: the files hold tokens."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp creates it 0600
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UpConfigError(f"{path}: {e}") from None


def _append(path: Path, text: str) -> None:
    """Append and check the result still parses; a file that would break is left as it was."""
    before = path.read_text(encoding="utf-8")
    sep = "" if before.endswith("\n") else "\n"
    try:
        tomllib.loads(before + sep + text)
    except tomllib.TOMLDecodeError as e:
        raise UpConfigError(f"{path}: cannot append a model entry: {e}") from None
    write_atomic(path, before + sep + text)


@dataclass
class Written:
    created: list[Path]
    added: list[str]  # served ids newly added to the catalogue or default models


def ensure(
    config_dir: Path,
    models: list[ModelArg],
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    metrics_port: int = DEFAULT_METRICS_PORT,
    neuron_port: int = DEFAULT_NEURON_PORT,
) -> Written:
    """Write whichever of the three files is missing (one shared token), then append the
    `models` that cortex's catalogue or the neuron's [[default_models]] do not list yet."""
    config_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cortex, catalogue, neuron = (
        config_dir / "cortex.toml",
        config_dir / "models.toml",
        config_dir / "neuron.toml",
    )
    created: list[Path] = []
    token = _existing_token(cortex, neuron) or secrets.token_urlsafe(32)
    neuron_url = f"http://{url_host(host)}:{neuron_port}"
    for path, text in (
        (
            cortex,
            lambda: cortex_toml(
                host,
                port,
                metrics_port,
                neuron_url,
                token,
                "sk-helexa-" + secrets.token_hex(16),
                "sk-helexa-admin-" + secrets.token_hex(16),
            ),
        ),
        (catalogue, models_toml),
        (neuron, lambda: neuron_toml(host, neuron_port, token)),
    ):
        if not path.exists():
            write_atomic(path, text())
            created.append(path)
    added: list[str] = []
    known = {m.get("id") for m in read(catalogue).get("models", []) if isinstance(m, dict)}
    for m in models:
        if m.served_id not in known:
            _append(catalogue, catalogue_block(m))
            known.add(m.served_id)
            added.append(m.served_id)
    warm = set()
    for d in read(neuron).get("default_models", []):
        if isinstance(d, dict) and isinstance(d.get("model_id"), str):
            warm.add(_served(d["model_id"], d.get("served_model_id")))
    for m in models:
        if m.served_id not in warm:
            _append(neuron, default_model_block(m))
            warm.add(m.served_id)
            if m.served_id not in added:
                added.append(m.served_id)
    return Written(created, added)


def _served(model_id: str, served: Any) -> str:
    try:
        return parse_model_id(model_id).served_id(served if isinstance(served, str) else None)
    except ApiError:
        return model_id


def _existing_token(cortex: Path, neuron: Path) -> str | None:
    """A file that survived (the other was deleted) keeps its token, so the pair still match."""
    if neuron.exists():
        tok = (read(neuron).get("auth") or {}).get("token")
        if isinstance(tok, str) and tok:
            return tok
    if cortex.exists():
        for n in read(cortex).get("neurons", []):
            if isinstance(n, dict) and n.get("name") == LOCAL_NODE and n.get("token"):
                return str(n["token"])
    return None
