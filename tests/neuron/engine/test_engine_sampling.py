"""Sampling filters against transformers' own logits processors; params and seeds."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from transformers.generation.logits_process import (  # noqa: E402
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from helexa.neuron.engine.sampling import (  # noqa: E402
    Sampler,
    apply_min_p,
    apply_top_k,
    apply_top_p,
    defaults_from_generation_config,
)
from helexa.neuron.engine.sampling_params import (  # noqa: E402
    SamplingError,
    SamplingParams,
    resolve,
)

pytestmark = pytest.mark.torch

CPU = torch.device("cpu")


def logits(seed: int = 0, n: int = 300) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * 3


@pytest.mark.parametrize("k", [1, 5, 50, 1000])
def test_top_k_matches_transformers(k: int) -> None:
    x = logits(k)
    ref = TopKLogitsWarper(k)(None, x[None])[0]
    assert torch.equal(apply_top_k(x, k), ref)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.999])
def test_top_p_matches_transformers(p: float) -> None:
    x = logits(int(p * 100))
    ref = TopPLogitsWarper(p)(None, x[None])[0]
    assert torch.equal(apply_top_p(x, p), ref)


@pytest.mark.parametrize("m", [0.01, 0.1, 0.5])
def test_min_p_matches_transformers(m: float) -> None:
    x = logits(int(m * 100))
    ref = MinPLogitsWarper(m)(None, x[None])[0]
    assert torch.equal(apply_min_p(x, m), ref)


def test_full_chain_matches_transformers() -> None:
    x = logits(3)
    prompt = [5, 6, 7, 7]
    params = SamplingParams(
        temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.3, seed=1
    )
    s = Sampler(params, vocab_size=x.shape[0], device=CPU, prompt_ids=prompt)
    s.observe(9)
    ids = torch.tensor([[*prompt, 9]])
    ref = RepetitionPenaltyLogitsProcessor(1.3)(ids, x[None].clone())
    for proc in (
        TemperatureLogitsWarper(0.7),
        TopKLogitsWarper(40),
        TopPLogitsWarper(0.9),
        MinPLogitsWarper(0.05),
    ):
        ref = proc(ids, ref)
    assert torch.allclose(s.process(x), ref[0], equal_nan=True)


def test_presence_and_frequency_penalties() -> None:
    x = torch.zeros(10)
    s = Sampler(
        SamplingParams(temperature=0, presence_penalty=0.5, frequency_penalty=0.25),
        vocab_size=10,
        device=CPU,
        prompt_ids=[1, 2],  # the prompt does not count for these two
    )
    for t in (3, 3, 4):
        s.observe(t)
    out = s.process(x)
    assert out[1] == 0 and out[2] == 0
    assert out[3] == pytest.approx(-0.5 - 0.5)
    assert out[4] == pytest.approx(-0.5 - 0.25)


def test_greedy_is_argmax_after_penalties() -> None:
    x = torch.tensor([0.0, 5.0, 4.0])
    s = Sampler(
        SamplingParams(temperature=0, repetition_penalty=2.0),
        vocab_size=3,
        device=CPU,
        prompt_ids=[1],
    )
    assert int(s.sample(x)) == 2  # 5 / 2 < 4


def draw(seed: int | None, n: int = 40) -> list[int]:
    s = Sampler(
        SamplingParams(temperature=1.0, top_p=0.95, seed=seed),
        vocab_size=300,
        device=CPU,
        prompt_ids=[],
    )
    return [int(s.sample(logits(i))) for i in range(n)]


def test_seeds_are_per_request() -> None:
    torch.manual_seed(0)
    a = draw(42)
    torch.manual_seed(1)  # the global RNG plays no part
    assert draw(42) == a
    assert draw(43) != a
    assert draw(None) != draw(None)


def test_resolve_precedence_and_defaults() -> None:
    assert resolve(None) == SamplingParams()
    gc = defaults_from_generation_config(
        {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "do_sample": True, "eos_token_id": 2}
    )
    p = resolve({"top_p": 0.5, "top_k": None, "seed": 7}, gc)
    assert (p.temperature, p.top_p, p.top_k, p.seed) == (0.6, 0.5, 20, 7)
    assert resolve({}, defaults_from_generation_config({"do_sample": False})).greedy


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -1),
        ("temperature", "hot"),
        ("top_p", 0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("top_k", 2.5),
        ("min_p", 2),
        ("repetition_penalty", 0),
        ("seed", 1.5),
        ("presence_penalty", float("nan")),
        ("temperature", True),
    ],
)
def test_resolve_rejects(field: str, value: object) -> None:
    with pytest.raises(SamplingError) as ei:
        resolve({field: value})
    assert ei.value.field == field
    assert str(ei.value).startswith(f"'{field}' ")
