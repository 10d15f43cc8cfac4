"""Embedding-only models: sentence-transformers pooling (mean on a tiny BERT encoder,
last-token on a Qwen3 checkpoint), Normalize, and the capability they report."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from transformers import AutoModel  # noqa: E402
from workerctl import WorkerClient  # noqa: E402
from workerctl import workers as started  # noqa: E402

pytestmark = pytest.mark.torch

INPUTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14]]


@pytest.fixture(scope="module")
def workers(
    tiny_bert_embedder: Path, tiny_qwen3_embedder: Path
) -> Iterator[dict[str, WorkerClient]]:
    specs = {
        "bert": {"path": str(tiny_bert_embedder), "served_id": "bert"},
        "qwen": {"path": str(tiny_qwen3_embedder), "served_id": "qwen-emb"},
    }
    with started(specs) as ws:
        yield ws


def expected(path: Path, mode: str) -> list[torch.Tensor]:
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    for seq in INPUTS:
        with torch.no_grad():
            h = model(input_ids=torch.tensor([seq])).last_hidden_state[0]
        v = h.mean(dim=0) if mode == "mean" else h[-1]
        out.append(torch.nn.functional.normalize(v, dim=-1))
    return out


@pytest.mark.parametrize(("name", "mode", "dim"), [("bert", "mean", 32), ("qwen", "last", 64)])
def test_sentence_transformers_pooling(
    workers: dict[str, WorkerClient],
    tiny_bert_embedder: Path,
    tiny_qwen3_embedder: Path,
    name: str,
    mode: str,
    dim: int,
) -> None:
    w = workers[name]
    assert w.ready is not None, w.load_failed
    assert w.ready["capabilities"] == ["embedding"]
    assert w.ready["embedding_dim"] == dim
    f = w.call({"op": "embed", "id": "e", "inputs": INPUTS})
    assert f["prompt_tokens"] == sum(map(len, INPUTS))
    path = tiny_bert_embedder if name == "bert" else tiny_qwen3_embedder
    for v, ref in zip(f["vectors"], expected(path, mode), strict=True):
        assert len(v) == dim
        assert math.isclose(math.hypot(*v), 1.0, rel_tol=1e-5)
        assert torch.allclose(torch.tensor(v), ref, atol=1e-5)


def test_embedding_models_refuse_generation(workers: dict[str, WorkerClient]) -> None:
    f = workers["qwen"].call({"op": "generate", "id": "g", "prompt_ids": [1, 2], "max_tokens": 3})
    assert (f["ev"], f["code"]) == ("error", "unsupported_model_capability")
    assert "embedding model" in f["message"]
