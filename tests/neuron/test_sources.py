"""Load id → local directory, hub errors, progress, weight estimate.

The hub is never reached: a fake `snapshot_download` serves repos from local directories, and
the real one is only run offline (`local_files_only`) or against a closed loopback port.
"""

from __future__ import annotations

import fnmatch
import json
import math
import shutil
import struct
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from huggingface_hub import errors as hf

from helexa.neuron import weights
from helexa.neuron.download_progress import progress_class
from helexa.neuron.sources import (
    META_PATTERNS,
    fetch_model,
    fetch_tokenizer,
)
from helexa.neuron.weights import estimate_weight_bytes, estimate_weight_mb
from helexa.wire.advice import get_model_advice
from helexa.wire.errors import ApiError
from helexa.wire.modelid import parse_model_id

HF = "https://huggingface.co"
SOURCES = {"helexa": "https://registry.helexa.ai"}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A valid safetensors file of zeros: name → (dtype, shape)."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "U8": 1}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = math.prod(shape) * sizes[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def make_repo(root: Path, *, sharded: bool = False) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "qwen3", "eos_token_id": 2}')
    (root / "generation_config.json").write_text('{"eos_token_id": 2}')
    (root / "tokenizer.json").write_text("{}")
    (root / "tokenizer_config.json").write_text("{}")
    (root / "chat_template.jinja").write_text("{{ messages }}")
    (root / "README.md").write_text("not needed")
    (root / "pytorch_model.bin").write_bytes(b"x" * 100)
    (root / "onnx").mkdir()
    (root / "onnx" / "model.onnx").write_bytes(b"x")
    (root / "1_Pooling").mkdir()
    (root / "1_Pooling" / "config.json").write_text("{}")
    if sharded:
        write_safetensors(root / "model-00001-of-00002.safetensors", {"a": ("BF16", [256, 256])})
        write_safetensors(root / "model-00002-of-00002.safetensors", {"b": ("F32", [128])})
        write_safetensors(root / "consolidated.safetensors", {"c": ("BF16", [512, 512])})
        index = {
            "metadata": {},
            "weight_map": {
                "a": "model-00001-of-00002.safetensors",
                "b": "model-00002-of-00002.safetensors",
            },
        }
        (root / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        write_safetensors(root / "model.safetensors", {"w": ("BF16", [64, 64])})
    return root


class FakeHub:
    """`snapshot_download` over local repos, with the hub cache layout and the bytes bar."""

    def __init__(self, repos: dict[tuple[str, str], Path]) -> None:
        self.repos = repos
        self.calls: list[dict[str, Any]] = []
        self.raise_on: dict[int, BaseException] = {}  # call number → exception

    def __call__(self, repo_id: str, **kw: Any) -> str:
        self.calls.append({"repo_id": repo_id, **kw})
        if len(self.calls) in self.raise_on:
            raise self.raise_on[len(self.calls)]
        snap = Path(kw["cache_dir"]) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "c1"
        patterns = kw["allow_patterns"]
        if kw.get("local_files_only"):
            if not snap.is_dir():
                raise hf.LocalEntryNotFoundError(
                    "Cannot find an appropriate cached snapshot folder"
                )
            return str(snap)
        src = self.repos.get((kw["endpoint"], repo_id))
        if src is None:
            raise hf.RepositoryNotFoundError("Repository Not Found", response=response(404))
        files = [
            f
            for f in sorted(src.rglob("*"))
            if f.is_file() and any(fnmatch.fnmatch(str(f.relative_to(src)), p) for p in patterns)
        ]
        bar = None
        if kw.get("tqdm_class") is not None:
            bar = kw["tqdm_class"](
                name="huggingface_hub.snapshot_download", total=0, initial=0, unit="B"
            )
        for f in files:
            dst = snap / f.relative_to(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst)
            if bar is not None:
                bar.total += f.stat().st_size
                bar.update(f.stat().st_size)
        snap.mkdir(parents=True, exist_ok=True)
        return str(snap)


def response(status: int) -> Any:
    try:
        import httpx2 as httpx  # what huggingface_hub >= 2 uses
    except ImportError:
        import httpx  # type: ignore[no-redef]
    return httpx.Response(status, request=httpx.Request("GET", f"{HF}/api/models/x/y"))


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    fake = FakeHub(
        {
            (HF, "Qwen/Tiny"): make_repo(tmp_path / "repos" / "tiny"),
            (HF, "Qwen/Sharded"): make_repo(tmp_path / "repos" / "sharded", sharded=True),
            ("https://registry.helexa.ai", "Helexa/Tiny"): make_repo(tmp_path / "repos" / "hx"),
            ("https://mirror.example", "Qwen/Tiny"): make_repo(tmp_path / "repos" / "mirror"),
        }
    )
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return fake


def fetch(s: str, tmp_path: Path, environ: dict[str, str] | None = None, **kw: Any) -> Path:
    mid = parse_model_id(s, SOURCES).with_default_scheme("huggingface")
    return fetch_model(
        mid, sources=SOURCES, cache_dir=tmp_path / "cache", environ=environ or {}, label=s, **kw
    )


# ---- local paths -------------------------------------------------------------------------------


def test_local_dir(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "m")
    assert fetch_model(parse_model_id(str(repo)), sources={}) == repo


@pytest.mark.parametrize(
    ("setup", "where"),
    [
        ("missing", "{p}"),
        ("file", "{p} (expected a model directory)"),
        ("no_config", "{p} (no config.json there)"),
    ],
)
def test_local_path_not_found(tmp_path: Path, setup: str, where: str) -> None:
    p = tmp_path / "m"
    if setup == "file":
        p.write_text("x")
    elif setup == "no_config":
        p.mkdir()
    with pytest.raises(ApiError) as ei:
        fetch_model(parse_model_id(str(p)), sources={})
    e = ei.value
    assert (e.status, e.code, e.type) == (404, "model_source_not_found", "invalid_request_error")
    assert e.message == f"model '{p}' was not found at {where.format(p=p)}"


# ---- hub ---------------------------------------------------------------------------------------


def test_hub_fetches_only_needed_files(hub: FakeHub, tmp_path: Path) -> None:
    root = fetch("Qwen/Tiny", tmp_path, {"HF_TOKEN": "hf_x"})
    got = sorted(str(f.relative_to(root)) for f in root.rglob("*") if f.is_file())
    assert got == [
        "1_Pooling/config.json",
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    meta, weights = hub.calls
    assert meta["allow_patterns"] == META_PATTERNS
    assert weights["allow_patterns"] == ["*.safetensors"]
    for call in hub.calls:
        assert call["endpoint"] == HF
        assert call["token"] == "hf_x"
        assert call["cache_dir"] == str(tmp_path / "cache")
        assert call["local_files_only"] is False


def test_hub_sharded_fetches_indexed_shards_only(hub: FakeHub, tmp_path: Path) -> None:
    root = fetch("Qwen/Sharded", tmp_path)
    assert hub.calls[1]["allow_patterns"] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert not (root / "consolidated.safetensors").exists()
    assert (root / "model-00002-of-00002.safetensors").is_file()


def test_scheme_endpoint_and_cache(hub: FakeHub, tmp_path: Path) -> None:
    root = fetch("helexa:Helexa/Tiny", tmp_path)
    assert hub.calls[0]["endpoint"] == "https://registry.helexa.ai"
    assert hub.calls[0]["cache_dir"] == str(tmp_path / "cache" / "source--helexa")
    assert (root / "config.json").is_file()


def test_hf_endpoint_env(hub: FakeHub, tmp_path: Path) -> None:
    fetch("Qwen/Tiny", tmp_path, {"HF_ENDPOINT": "https://mirror.example/"})
    assert hub.calls[0]["endpoint"] == "https://mirror.example"


def test_progress_reports_bytes(hub: FakeHub, tmp_path: Path) -> None:
    seen: list[tuple[int | None, int | None]] = []
    root = fetch("Qwen/Sharded", tmp_path, progress=lambda d, t: seen.append((d, t)))
    total = sum(
        (root / n).stat().st_size
        for n in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    )
    assert len(seen) >= 3
    dones = [d for d, _ in seen]
    assert dones == sorted(dones)
    assert seen[-1] == (total, total)


def test_progress_class_tracks_only_the_bytes_bar() -> None:
    seen: list[tuple[int, int | None]] = []
    cls = progress_class(lambda d, t: seen.append((d, t)))
    files = cls(total=3, desc="Fetching 3 files")
    files.update(1)
    bar = cls(name="huggingface_hub.snapshot_download", total=0, initial=0, unit="B")
    bar.total = 100
    bar.update(40)
    bar.update(60)
    bar.close()
    files.close()
    assert seen == [(40, 100), (100, 100)]


def test_cached_offline(hub: FakeHub, tmp_path: Path) -> None:
    fetch("Qwen/Tiny", tmp_path)
    hub.calls.clear()
    root = fetch("Qwen/Tiny", tmp_path, {"HF_HUB_OFFLINE": "1"})
    assert (root / "model.safetensors").is_file()
    assert all(c["local_files_only"] for c in hub.calls)


def test_offline_not_cached(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(ApiError) as ei:
        fetch("Qwen/Tiny", tmp_path, {"HF_HUB_OFFLINE": "1"})
    e = ei.value
    assert (e.status, e.code) == (404, "model_source_not_found")
    assert e.message.startswith(f"model 'Qwen/Tiny' was not found at {tmp_path / 'cache'} (")
    assert "HF_HUB_OFFLINE is set" in e.message
    assert "hf download Qwen/Tiny" in e.message
    assert "local model directory" in e.message
    # the same words cortex and `helexa up` use
    assert get_model_advice("Qwen/Tiny", cache_dir=str(tmp_path / "cache")) in e.message


def test_repo_not_found(hub: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(ApiError) as ei:
        fetch("Qwen/Nope", tmp_path)
    assert (ei.value.status, ei.value.code) == (404, "model_source_not_found")
    assert ei.value.message == f"model 'Qwen/Nope' was not found at {HF}"


def test_messages_quote_the_id_as_written(hub: FakeHub, tmp_path: Path) -> None:
    mid = parse_model_id("Qwen/Nope").with_default_scheme("huggingface")
    assert mid.qualified() == "huggingface:Qwen/Nope" and mid.label == "Qwen/Nope"
    with pytest.raises(ApiError) as ei:
        fetch_model(mid, sources=SOURCES, cache_dir=tmp_path, environ={})
    assert ei.value.message == f"model 'Qwen/Nope' was not found at {HF}"


def test_fetch_tokenizer_skips_weights(hub: FakeHub, tmp_path: Path) -> None:
    mid = parse_model_id("Qwen/Sharded").with_default_scheme("huggingface")
    root = fetch_tokenizer(mid, sources=SOURCES, cache_dir=tmp_path, environ={})
    assert (root / "tokenizer.json").is_file() and (root / "chat_template.jinja").is_file()
    assert not list(root.glob("*.safetensors"))
    assert [c["allow_patterns"] for c in hub.calls] == [META_PATTERNS]
    (hub.repos[(HF, "Qwen/Tiny")] / "tokenizer.json").unlink()
    with pytest.raises(ApiError) as ei:
        fetch_tokenizer(
            parse_model_id("Qwen/Tiny").with_default_scheme("huggingface"),
            sources=SOURCES,
            cache_dir=tmp_path / "other",
            environ={},
        )
    assert ei.value.message == (
        f"model 'Qwen/Tiny' was not found at {HF}/Qwen/Tiny (the repo has no tokenizer.json)"
    )
    local = make_repo(tmp_path / "local")
    assert fetch_tokenizer(parse_model_id(str(local)), sources={}) == local


def test_repo_without_config(hub: FakeHub, tmp_path: Path) -> None:
    (hub.repos[(HF, "Qwen/Tiny")] / "config.json").unlink()
    with pytest.raises(ApiError) as ei:
        fetch("Qwen/Tiny", tmp_path)
    assert ei.value.code == "model_source_not_found"
    assert ei.value.message == (
        f"model 'Qwen/Tiny' was not found at {HF}/Qwen/Tiny (the repo has no config.json)"
    )


def unreachable() -> BaseException:
    e = hf.LocalEntryNotFoundError("An error happened while trying to locate the files")
    e.__cause__ = ConnectionError("connection refused")
    return e


def hub_down() -> BaseException:
    e = hf.LocalEntryNotFoundError("An error happened while trying to locate the files")
    e.__cause__ = hf.HfHubHTTPError("503 Service Unavailable", response=response(503))
    return e


@pytest.mark.parametrize(
    ("exc", "call", "status", "code", "fragment"),
    [
        (unreachable, 1, 404, "model_source_not_found", "is unreachable and it is not cached"),
        (hub_down, 1, 502, "download_failed", "failed: HTTP 503: 503 Service Unavailable"),
        (
            lambda: hf.GatedRepoError("gated", response=response(403)),
            1,
            502,
            "download_failed",
            "the repo is gated; accept its terms on the hub and set HF_TOKEN",
        ),
        (
            lambda: hf.HfHubHTTPError("500 Server Error", response=response(500)),
            2,
            502,
            "download_failed",
            "HTTP 500: 500 Server Error",
        ),
        (
            lambda: ConnectionResetError("reset by peer"),
            2,
            502,
            "download_failed",
            "ConnectionResetError: reset by peer",
        ),
        (lambda: OSError(28, "No space left on device"), 2, 502, "download_failed", "No space"),
    ],
)
def test_hub_errors(
    hub: FakeHub, tmp_path: Path, exc: Any, call: int, status: int, code: str, fragment: str
) -> None:
    hub.raise_on[call] = exc()
    with pytest.raises(ApiError) as ei:
        fetch("Qwen/Tiny", tmp_path)
    assert (ei.value.status, ei.value.code) == (status, code)
    if code == "download_failed":
        assert ei.value.message.startswith(f"downloading 'Qwen/Tiny' from {HF} failed: ")
        assert ei.value.type == "api_error"
    assert fragment in ei.value.message


def test_programming_errors_propagate(hub: FakeHub, tmp_path: Path) -> None:
    hub.raise_on[1] = ValueError("bad argument")
    with pytest.raises(ValueError, match="bad argument"):
        fetch("Qwen/Tiny", tmp_path)


# ---- the real huggingface_hub, never online ----------------------------------------------------


def test_real_hub_offline_not_cached(tmp_path: Path) -> None:
    with pytest.raises(ApiError) as ei:
        fetch("Qwen/Tiny", tmp_path, {"HF_HUB_OFFLINE": "1"})
    assert ei.value.code == "model_source_not_found"
    assert "HF_HUB_OFFLINE is set" in ei.value.message


def test_real_hub_offline_cached(tmp_path: Path) -> None:
    repo = tmp_path / "cache" / "models--Qwen--Tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    shutil.copytree(make_repo(tmp_path / "src"), snap)
    assert fetch("Qwen/Tiny", tmp_path, {"HF_HUB_OFFLINE": "1"}) == snap


def test_real_hub_unreachable(tmp_path: Path) -> None:
    mid = parse_model_id("Qwen/Tiny").with_default_scheme("huggingface")
    with pytest.raises(ApiError) as ei:
        fetch_model(
            mid,
            sources={"huggingface": "http://127.0.0.1:9"},
            cache_dir=tmp_path,
            environ={},
            label="Qwen/Tiny",
        )
    assert (ei.value.status, ei.value.code) == (404, "model_source_not_found")
    assert "http://127.0.0.1:9 is unreachable and it is not cached" in ei.value.message


# ---- weight estimate ---------------------------------------------------------------------------


def test_estimate_rescales_floats_only(tmp_path: Path) -> None:
    write_safetensors(
        tmp_path / "model.safetensors",
        {"a": ("BF16", [1024, 1024]), "b": ("F32", [512, 512]), "c": ("I64", [1000])},
    )
    floats = 1024 * 1024 + 512 * 512
    assert estimate_weight_bytes(tmp_path, "bf16") == floats * 2 + 8000
    assert estimate_weight_bytes(tmp_path, "fp32") == floats * 4 + 8000
    assert estimate_weight_mb(tmp_path, "fp16") == math.ceil((floats * 2 + 8000) * 1.1 / 2**20)
    assert estimate_weight_mb(tmp_path, "fp32") == 6  # 5.0 MB * 1.1, rounded up


def test_estimate_uses_index(tmp_path: Path) -> None:
    root = make_repo(tmp_path / "m", sharded=True)
    assert estimate_weight_bytes(root, "bf16") == (256 * 256 + 128) * 2


def test_estimate_without_safetensors(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(bytes(2**20))
    assert estimate_weight_mb(tmp_path, "bf16") == 2


def test_bad_safetensors(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\x01")
    with pytest.raises(ValueError, match="not a safetensors file"):
        weights.estimate_weight_bytes(tmp_path, "bf16")
