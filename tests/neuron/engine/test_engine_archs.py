"""Greedy decoding through real workers equals transformers `generate` on the tiny MoE,
Gated-DeltaNet hybrid and Qwen3.5 architectures (dense Qwen3: test_engine_worker.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from workerctl import WorkerClient  # noqa: E402
from workerctl import workers as started  # noqa: E402

pytestmark = pytest.mark.torch

ARCHS = ("qwen3_moe", "qwen3_next", "qwen3_5")


@pytest.fixture(scope="module")
def workers(tiny_models: dict[str, Path]) -> Iterator[dict[str, WorkerClient]]:
    with started({a: {"path": str(tiny_models[a]), "served_id": a} for a in ARCHS}) as ws:
        yield ws


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_equals_generate(
    arch: str, workers: dict[str, WorkerClient], tiny_models: dict[str, Path]
) -> None:
    w = workers[arch]
    assert w.ready is not None, w.load_failed
    assert w.ready["model_type"].startswith(arch)
    path = tiny_models[arch]
    tok = AutoTokenizer.from_pretrained(path)
    ids = list(
        tok.apply_chat_template(
            [{"role": "user", "content": "Read the file /etc/hosts — naïve 日本語 🙂"}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    )
    res = w.generate(ids, max_tokens=32)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    inp = torch.tensor([ids])
    ref = model.generate(
        inp, attention_mask=torch.ones_like(inp), do_sample=False, max_new_tokens=32
    )
    ref_ids = ref[0, len(ids) :].tolist()
    assert res.ids == ref_ids
    eos = set(w.ready["eos_token_ids"])
    assert res.text == tok.decode([i for i in ref_ids if i not in eos], skip_special_tokens=True)
