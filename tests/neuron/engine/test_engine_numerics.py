"""In-process engine numerics (fp32, CPU): our loop against transformers `generate`.

Logits within 1e-4 max-abs at every step and identical greedy tokens, with the default dynamic
cache and with the pooled static cache, on all four architectures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from helexa.neuron.engine.frames import Generate  # noqa: E402
from helexa.neuron.engine.generation import GenerationState  # noqa: E402
from helexa.neuron.engine.loader import LoadSpec  # noqa: E402
from helexa.neuron.engine.static_pool import StaticPool  # noqa: E402
from helexa.neuron.engine.torch_engine import TorchEngine  # noqa: E402
from helexa.neuron.engine.torch_load import load  # noqa: E402

pytestmark = pytest.mark.torch

ARCHS = ("qwen3", "qwen3_moe", "qwen3_next", "qwen3_5")
STEPS = 12


def prompt_ids(path: Path) -> list[int]:
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Read /etc/hosts, café 日本語 🙂"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    return list(ids)


def reference(path: Path, ids: list[int]) -> tuple[list[int], list[Any]]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    inp = torch.tensor([ids])
    out = model.generate(
        inp,
        attention_mask=torch.ones_like(inp),
        do_sample=False,
        max_new_tokens=STEPS,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return out.sequences[0, len(ids) :].tolist(), [lg[0] for lg in out.logits]


def run(engine: TorchEngine, ids: list[int]) -> tuple[GenerationState, list[Any]]:
    gen = engine.start(Generate("n", ids, STEPS, {"temperature": 0}))
    gen.keep_logits = True
    seen = []
    while not gen.finished:
        (result,) = engine.step([gen])
        assert result.error is None
        if gen.last_logits is not None and len(seen) < len(gen.token_ids):
            seen.append(gen.last_logits)
    return gen, seen


@pytest.fixture(scope="module")
def models(tiny_models: dict[str, Path]) -> dict[str, Path]:
    return tiny_models


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_logits_and_tokens_match_generate(models: dict[str, Path], arch: str, static: bool) -> None:
    path = models[arch]
    ids = prompt_ids(path)
    ref_tokens, ref_logits = reference(path, ids)
    engine = load(LoadSpec(path=str(path), served_id=arch, quant="fp32", static_cache=static))
    assert engine.static is static
    for _ in range(2 if static else 1):  # the second run reuses a pooled static cache
        gen, logits = run(engine, ids)
        assert gen.token_ids == ref_tokens
        for ours, theirs in zip(logits, ref_logits, strict=False):
            assert (ours - theirs).abs().max().item() < 1e-4
        assert len(logits) == len(ref_tokens)


def test_embedding_is_last_token_normalised(models: dict[str, Path]) -> None:
    path = models["qwen3"]
    engine = load(LoadSpec(path=str(path), served_id="q", quant="fp32"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    inputs = [[5, 6, 7], [8, 9], [5, 6, 7], [10, 11, 12, 13]]
    vecs, n = engine.embed(inputs)
    assert n == 12
    assert vecs[0] == vecs[2]
    for seq, v in zip(inputs, vecs, strict=True):
        with torch.no_grad():
            h = model.model(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]
        ref = torch.nn.functional.normalize(h, dim=-1)
        assert torch.allclose(torch.tensor(v), ref, atol=1e-5)


def test_static_pool_sizes() -> None:
    buckets = StaticPool(None, 1024)
    assert [buckets.size_for(n) for n in (1, 256, 257, 700, 1024, 1500)] == [
        256,
        256,
        512,
        1024,
        1024,
        1500,
    ]
    fixed = StaticPool(None, 1024, fixed=True)  # the compiled path: one size, one graph
    assert [fixed.size_for(n) for n in (1, 900, 2000)] == [1024, 1024, 2000]
