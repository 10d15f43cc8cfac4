"""neuron tier-1 fixtures: tiny real models (built once per session) and worker helpers.

Fixtures here build hub-style directories with tests/fixtures/tiny.py; other neuron test
modules may append their own fixtures at the end of this file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from workerctl import WorkerClient

from rig.require import require_module

ARCHS = ("qwen3", "qwen3_moe", "qwen3_next", "qwen3_5")


def _build(root: pytest.TempPathFactory, name: str, arch: str = "qwen3", **kw: Any) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from fixtures.tiny import build_model

    return build_model(root.mktemp(name), arch, **kw)


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3 with atomic <think>/<tool_call> tokens."""
    return _build(tmp_path_factory, "qwen3")


@pytest.fixture(scope="session")
def tiny_qwen3_split_markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3 whose tokenizer splits the markers into several tokens."""
    return _build(tmp_path_factory, "qwen3_split", atomic_markers=False)


@pytest.fixture(scope="session")
def tiny_qwen3_opens_think(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3 whose chat template ends the generation prompt with `<think>\\n`."""
    return _build(tmp_path_factory, "qwen3_think", opens_think=True)


@pytest.fixture(scope="session")
def tiny_qwen3_moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory, "qwen3_moe", "qwen3_moe")


@pytest.fixture(scope="session")
def tiny_qwen3_next(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory, "qwen3_next", "qwen3_next")


@pytest.fixture(scope="session")
def tiny_qwen3_5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory, "qwen3_5", "qwen3_5")


@pytest.fixture(scope="session")
def tiny_models(
    tiny_qwen3: Path, tiny_qwen3_moe: Path, tiny_qwen3_next: Path, tiny_qwen3_5: Path
) -> dict[str, Path]:
    """One directory per architecture."""
    return {
        "qwen3": tiny_qwen3,
        "qwen3_moe": tiny_qwen3_moe,
        "qwen3_next": tiny_qwen3_next,
        "qwen3_5": tiny_qwen3_5,
    }


def write_sentence_transformers(dst: Path, pooling: str, *, normalize: bool = True) -> None:
    """Add modules.json and 1_Pooling/config.json (sentence-transformers layout) to a model dir."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    (dst / "modules.json").write_text(json.dumps(modules))
    (dst / "1_Pooling").mkdir(exist_ok=True)
    flags = {
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": pooling == "lasttoken",
    }
    (dst / "1_Pooling" / "config.json").write_text(json.dumps(flags))


@pytest.fixture(scope="session")
def tiny_bert_embedder(tmp_path_factory: pytest.TempPathFactory, tiny_qwen3: Path) -> Path:
    """A sentence-transformers encoder (tiny BERT, mean pooling + Normalize), reusing the
    tiny tokenizer files."""
    pytest.importorskip("torch")
    import torch
    from transformers import BertConfig, BertModel

    dst = tmp_path_factory.mktemp("bert_st")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_qwen3 / name, dst / name)
    vocab = json.loads((tiny_qwen3 / "config.json").read_text())["vocab_size"]
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(1)
    BertModel(cfg).save_pretrained(dst, safe_serialization=True)
    write_sentence_transformers(dst, "mean")
    return dst


@pytest.fixture(scope="session")
def tiny_qwen3_embedder(tmp_path_factory: pytest.TempPathFactory, tiny_qwen3: Path) -> Path:
    """The tiny Qwen3 as a sentence-transformers embedding model (last-token + Normalize)."""
    dst = tmp_path_factory.mktemp("qwen3_st") / "m"
    shutil.copytree(tiny_qwen3, dst)
    write_sentence_transformers(dst, "lasttoken")
    return dst


@pytest.fixture(scope="module")
def qwen3_worker(tiny_qwen3: Path) -> Iterator[WorkerClient]:
    """A real worker serving the tiny Qwen3 on the CPU in fp32 (one per module)."""
    with WorkerClient.start({"path": str(tiny_qwen3), "served_id": "tiny/qwen3"}) as w:
        yield w


@pytest.fixture(scope="session")
def tiny_qwen3_moe_normed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3 MoE with norm_topk_prob=True: llama.cpp always renormalises the top-k router
    weights, so this is the MoE checkpoint whose GGUF matches transformers token for token."""
    return _build(tmp_path_factory, "qwen3_moe_normed", "qwen3_moe", norm_topk_prob=True)


@pytest.fixture(scope="session")
def tiny_gguf(
    tmp_path_factory: pytest.TempPathFactory, tiny_qwen3: Path, tiny_qwen3_moe_normed: Path
) -> dict[str, Path]:
    """GGUF files of the tiny checkpoints: keys `qwen3-F32`, `qwen3-Q8_0`, `qwen3_moe-F32`,
    `qwen3_moe-Q8_0` (the source checkpoint of each: `tiny_qwen3`, `tiny_qwen3_moe_normed`)."""
    pytest.importorskip("gguf")
    from fixtures.gguf import QTYPES, write_gguf

    root = tmp_path_factory.mktemp("gguf")
    sources = {"qwen3": tiny_qwen3, "qwen3_moe": tiny_qwen3_moe_normed}
    return {
        f"{arch}-{q}": write_gguf(hf, root / f"tiny-{arch}-{q}.gguf", q)
        for arch, hf in sources.items()
        for q in QTYPES
    }


@pytest.fixture(scope="session")
def tiny_gguf_hybrid(
    tmp_path_factory: pytest.TempPathFactory, tiny_qwen3_next: Path, tiny_qwen3_5: Path
) -> dict[str, tuple[Path, Path]]:
    """F32 GGUFs of the hybrid checkpoints (linear + full attention), by arch: (GGUF, source)
    for `qwen3_next` (MoE) and `qwen3_5` (dense)."""
    pytest.importorskip("gguf")
    from fixtures.gguf import write_gguf

    root = tmp_path_factory.mktemp("gguf_hybrid")
    sources = {"qwen3_next": tiny_qwen3_next, "qwen3_5": tiny_qwen3_5}
    return {a: (write_gguf(hf, root / f"tiny-{a}-F32.gguf"), hf) for a, hf in sources.items()}


@pytest.fixture(scope="session")
def tiny_qwen3_wide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3 with rows of 256 and 512 (hidden, heads x head_dim, intermediate): what
    llama.cpp's K-quants need (super-blocks of 256), so a Q4_K_M of it holds real Q4_K."""
    return _build(
        tmp_path_factory, "qwen3_wide", hidden_size=256, intermediate_size=512, head_dim=64
    )


@pytest.fixture(scope="session")
def tiny_gguf_q4_k_m(tmp_path_factory: pytest.TempPathFactory, tiny_qwen3_wide: Path) -> Path:
    """`tiny_qwen3_wide` quantized to Q4_K_M by llama.cpp (from its F32 GGUF)."""
    pytest.importorskip("gguf")
    require_module("llama_cpp", install="pip install 'helexa[llamacpp]'")
    from fixtures.gguf import quantize, write_gguf

    root = tmp_path_factory.mktemp("gguf_q4km")
    f32 = write_gguf(tiny_qwen3_wide, root / "wide-F32.gguf", "F32")
    return quantize(f32, root / "wide-Q4_K_M.gguf", "Q4_K_M")


@pytest.fixture(scope="session")
def tiny_gguf_split(tmp_path_factory: pytest.TempPathFactory, tiny_qwen3: Path) -> Path:
    """The tiny Qwen3 as a Q8_0 GGUF split in three files; returns the first
    (`tiny-Q8_0-00001-of-00003.gguf`)."""
    pytest.importorskip("gguf")
    from fixtures.gguf import write_gguf

    dst = tmp_path_factory.mktemp("gguf_split") / "tiny-Q8_0.gguf"
    return write_gguf(tiny_qwen3, dst, "Q8_0", split_max_tensors=10)
