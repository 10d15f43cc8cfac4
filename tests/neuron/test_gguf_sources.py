"""GGUF sources: which file(s) a local path or a hub repo + quant means (gguf_files.py), and
fetch_model's GGUF branch over a fake hub (no network)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from test_sources import FakeHub

from helexa.neuron.gguf_files import gguf_stem, group_shards, local_gguf, select_gguf
from helexa.neuron.sources import fetch_model
from helexa.wire.errors import ApiError
from helexa.wire.modelid import parse_model_id

HF = "https://huggingface.co"
LISTING = [
    "README.md",
    "Qwen3-32B-Q4_K_M.gguf",
    "Qwen3-32B-Q4_K_S.gguf",
    "Qwen3-32B-Q8_0-00001-of-00002.gguf",
    "Qwen3-32B-Q8_0-00002-of-00002.gguf",
    "BF16/Qwen3-32B-BF16-00001-of-00003.gguf",
    "BF16/Qwen3-32B-BF16-00002-of-00003.gguf",
    "BF16/Qwen3-32B-BF16-00003-of-00003.gguf",
    "mmproj-F16.gguf",
]


def refused(files: list[str], quant: str | None) -> ApiError:
    with pytest.raises(ApiError) as e:
        select_gguf(files, quant, "Qwen/Qwen3-32B-GGUF")
    return e.value


def test_quant_picks_one_file_case_insensitive() -> None:
    assert select_gguf(LISTING, "q4_k_m", "m") == ["Qwen3-32B-Q4_K_M.gguf"]
    assert select_gguf(LISTING, "Q4-K-S", "m") == ["Qwen3-32B-Q4_K_S.gguf"]


def test_split_files_are_one_candidate_in_order() -> None:
    assert select_gguf(LISTING, "Q8_0", "m") == [
        "Qwen3-32B-Q8_0-00001-of-00002.gguf",
        "Qwen3-32B-Q8_0-00002-of-00002.gguf",
    ]
    assert select_gguf(LISTING, "bf16", "m")[0] == "BF16/Qwen3-32B-BF16-00001-of-00003.gguf"
    assert len(select_gguf(LISTING, "bf16", "m")) == 3


def test_several_matches_are_ambiguous_and_named() -> None:
    err = refused(LISTING, "Q4_K")
    assert (err.status, err.code) == (400, "ambiguous_gguf")
    assert "Qwen3-32B-Q4_K_M.gguf" in err.message and "Qwen3-32B-Q4_K_S.gguf" in err.message
    err = refused(LISTING, None)
    assert err.code == "ambiguous_gguf" and "set 'quant'" in err.message


def test_no_match_is_ambiguous_and_lists_the_files() -> None:
    err = refused(LISTING, "Q6_K")
    assert (err.status, err.code) == (400, "ambiguous_gguf")
    assert "Qwen3-32B-Q4_K_M" in err.message and "mmproj-F16" in err.message
    assert refused(["README.md"], None).code == "ambiguous_gguf"


def test_missing_shard_is_not_found() -> None:
    files = ["m-Q8_0-00001-of-00003.gguf", "m-Q8_0-00003-of-00003.gguf"]
    with pytest.raises(ApiError) as e:
        select_gguf(files, "Q8_0", "m")
    assert (e.value.status, e.value.code) == (404, "model_source_not_found")
    assert "00002-of-00003" in e.value.message


def test_stems_and_groups() -> None:
    assert gguf_stem("/x/Qwen3-32B-Q8_0-00001-of-00002.gguf") == "Qwen3-32B-Q8_0"
    assert gguf_stem("tiny.GGUF") == "tiny"
    assert list(group_shards(LISTING)) == [
        "BF16/Qwen3-32B-BF16-00001-of-00003.gguf",
        "Qwen3-32B-Q4_K_M.gguf",
        "Qwen3-32B-Q4_K_S.gguf",
        "Qwen3-32B-Q8_0-00001-of-00002.gguf",
        "mmproj-F16.gguf",
    ]


def touch(root: Path, names: list[str]) -> Path:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"GGUF")
    return root


def test_local_file_directory_and_split(tmp_path: Path) -> None:
    root = touch(tmp_path, LISTING)
    assert local_gguf(root / "Qwen3-32B-Q4_K_M.gguf", None, "m") == [root / "Qwen3-32B-Q4_K_M.gguf"]
    second = root / "Qwen3-32B-Q8_0-00002-of-00002.gguf"
    assert local_gguf(second, None, "m")[0] == root / "Qwen3-32B-Q8_0-00001-of-00002.gguf"
    assert local_gguf(root, "Q4_K_S", "m") == [root / "Qwen3-32B-Q4_K_S.gguf"]
    with pytest.raises(ApiError) as e:
        local_gguf(root, None, "m")
    assert e.value.code == "ambiguous_gguf"


def test_fetch_model_local_gguf(tmp_path: Path) -> None:
    root = touch(tmp_path / "models", LISTING)
    f = root / "Qwen3-32B-Q4_K_M.gguf"
    assert fetch_model(parse_model_id(str(f)), sources={}) == f
    got = fetch_model(parse_model_id(str(root)), sources={}, gguf=True, quant="Q8_0")
    assert got == root / "Qwen3-32B-Q8_0-00001-of-00002.gguf"
    with pytest.raises(ApiError) as e:
        fetch_model(parse_model_id(str(root / "nope.gguf")), sources={})
    assert (e.value.status, e.value.code) == (404, "model_source_not_found")
    with pytest.raises(ApiError) as e:
        fetch_model(parse_model_id(str(f)), sources={}, roots=[str(tmp_path / "other")])
    assert e.value.code == "model_path_not_allowed"


@pytest.fixture
def gguf_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    repo = touch(tmp_path / "repos" / "q", LISTING)
    fake = FakeHub({(HF, "Qwen/Qwen3-32B-GGUF"): repo})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)

    def list_repo_files(self: Any, repo_id: str, **kw: Any) -> list[str]:
        assert repo_id == "Qwen/Qwen3-32B-GGUF"
        return LISTING

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    return fake


def test_hub_downloads_only_the_chosen_shards_with_progress(
    gguf_hub: FakeHub, tmp_path: Path
) -> None:
    seen: list[tuple[int | None, int | None]] = []
    mid = parse_model_id("Qwen/Qwen3-32B-GGUF", {}).with_default_scheme("huggingface")
    got = fetch_model(
        mid,
        sources={},
        cache_dir=tmp_path / "cache",
        environ={},
        gguf=True,
        quant="q8_0",
        progress=lambda d, t: seen.append((d, t)),
    )
    assert got.name == "Qwen3-32B-Q8_0-00001-of-00002.gguf" and got.is_file()
    assert sorted(p.name for p in got.parent.glob("*.gguf")) == [
        "Qwen3-32B-Q8_0-00001-of-00002.gguf",
        "Qwen3-32B-Q8_0-00002-of-00002.gguf",
    ]
    assert gguf_hub.calls[-1]["allow_patterns"] == [
        "Qwen3-32B-Q8_0-00001-of-00002.gguf",
        "Qwen3-32B-Q8_0-00002-of-00002.gguf",
    ]
    assert seen[-1] == (8, 8)


def test_hub_ambiguous_quant_downloads_nothing(gguf_hub: FakeHub, tmp_path: Path) -> None:
    mid = parse_model_id("Qwen/Qwen3-32B-GGUF", {}).with_default_scheme("huggingface")
    with pytest.raises(ApiError) as e:
        fetch_model(mid, sources={}, cache_dir=tmp_path / "c", environ={}, gguf=True, quant="Q4_K")
    assert e.value.code == "ambiguous_gguf"
    assert gguf_hub.calls == []


def test_tokenizer_of_a_hub_gguf_reads_only_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_gguf: dict[str, Path]
) -> None:
    """/tokenize on a GGUF repo that isn't loaded: the file's head up to the end of its
    metadata (range reads), never the tensors; the tokenizer equals the whole file's."""
    from helexa.neuron.sources import fetch_tokenizer
    from helexa.neuron.tokenizer import ChatTokenizer

    full = tiny_gguf["qwen3-Q8_0"]
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(full, repo / "tiny-Q8_0.gguf")
    shutil.copy(tiny_gguf["qwen3-F32"], repo / "tiny-F32.gguf")
    fake = FakeHub({(HF, "Qwen/Tiny-GGUF"): repo})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "list_repo_files",
        lambda self, repo_id, **kw: sorted(p.name for p in repo.iterdir()),
    )
    read: list[int] = []

    class FakeFs:
        def __init__(self, **kw: Any) -> None:
            assert kw["endpoint"] == HF

        def open(self, path: str, mode: str) -> Any:
            assert path == "Qwen/Tiny-GGUF/tiny-Q8_0.gguf" and mode == "rb"
            f = (repo / "tiny-Q8_0.gguf").open("rb")
            real_read = f.read

            def counted(n: int = -1) -> bytes:
                data = real_read(n)
                read.append(len(data))
                return data

            f.read = counted  # type: ignore[method-assign]
            return f

    monkeypatch.setattr(huggingface_hub, "HfFileSystem", FakeFs)
    mid = parse_model_id("Qwen/Tiny-GGUF", {}).with_default_scheme("huggingface")
    kw: dict[str, Any] = {"sources": {}, "cache_dir": tmp_path / "c", "environ": {}}
    head = fetch_tokenizer(mid, quant="q8_0", **kw)
    assert head.suffix == ".gguf" and head.stat().st_size < full.stat().st_size / 4
    assert sum(read) < full.stat().st_size / 2
    text = "Read the file /etc/hosts <think>ok</think>"
    assert ChatTokenizer(head).encode(text) == ChatTokenizer(full).encode(text)
    assert fetch_tokenizer(mid, quant="Q8_0", **kw) == head  # cached: no second read
    with pytest.raises(ApiError) as e:
        fetch_tokenizer(mid, **kw)
    assert e.value.code == "ambiguous_gguf"
