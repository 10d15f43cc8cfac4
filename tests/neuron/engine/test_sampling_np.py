"""The numpy sampler (llamacpp harness) against the torch one (transformers' processors): the
same tokens survive each filter with the same probabilities, the same greedy picks after the
penalties; seeded draws repeat; it never writes to the logits it is given."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from helexa.neuron.engine.errors import Fault
from helexa.neuron.engine.sampling_np import NumpySampler, Scores, check_finite
from helexa.neuron.engine.sampling_params import resolve

V = 3000
PROMPT = [5, 17, 17, 300, 2999]
OUTPUT = [17, 42, 42, 42, 7]


def logits(seed: int, ties: bool = False) -> Scores:
    x = (np.random.default_rng(seed).standard_normal(V) * 3).astype(np.float32)
    if ties:  # many equal scores around the top, to exercise the tie rules
        x[np.argsort(x)[-40:-10]] = np.float32(x.max() - 1.0)
    return x


def numpy_sampler(req: dict[str, Any]) -> NumpySampler:
    s = NumpySampler(resolve(req), vocab_size=V, prompt_ids=PROMPT)
    for t in OUTPUT:
        s.observe(t)
    return s


def numpy_dist(req: dict[str, Any], x: Scores) -> dict[int, float]:
    ids, vals = numpy_sampler(req).candidates(x)
    e = np.exp(vals.astype(np.float64) - vals.max())
    keep = np.arange(V) if ids is None else ids
    return {int(i): float(p) for i, p in zip(keep, e / e.sum(), strict=True)}


CASES = [
    {"temperature": 0.7},
    {"temperature": 1.3, "top_k": 20},
    {"temperature": 0.8, "top_k": 50, "top_p": 0.8},
    {"temperature": 0.6, "top_p": 0.9},
    {"top_p": 0.3},
    {"temperature": 1.0, "min_p": 0.05},
    {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "min_p": 0.01},
    {"temperature": 0.8, "repetition_penalty": 1.3, "top_p": 0.9},
    {"temperature": 1.0, "presence_penalty": 0.5, "frequency_penalty": 0.4, "top_k": 30},
]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("req", CASES)
def test_filters_match_the_torch_sampler(req: dict[str, Any], ties: bool) -> None:
    torch = pytest.importorskip("torch")
    from helexa.neuron.engine.sampling import Sampler

    for seed in range(4):
        x = logits(seed, ties)
        ts = Sampler(resolve(req), vocab_size=V, device=torch.device("cpu"), prompt_ids=PROMPT)
        for t in OUTPUT:
            ts.observe(t)
        probs = torch.softmax(ts.process(torch.from_numpy(x.copy())).double(), -1).numpy()
        want = {int(i): float(probs[i]) for i in np.flatnonzero(probs > 0)}
        got = numpy_dist(req, x)
        # equal scores cut by top-p: which of them survive is the sort's order, in both
        assert ties or got.keys() == want.keys()
        assert len(got) == len(want)
        assert np.allclose(sorted(got.values()), sorted(want.values()), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "req",
    [
        {"temperature": 0},
        {"top_k": 1, "temperature": 2.0},
        {"temperature": 0, "repetition_penalty": 5.0},
        {"temperature": 0, "presence_penalty": 2.0, "frequency_penalty": 1.5},
    ],
)
def test_greedy_matches_the_torch_sampler(req: dict[str, Any]) -> None:
    torch = pytest.importorskip("torch")
    from helexa.neuron.engine.sampling import Sampler

    for seed in range(8):
        x = logits(seed)
        x[[17, 42]] = x.max() + 0.5  # penalised tokens at the top: the penalties decide
        ts = Sampler(resolve(req), vocab_size=V, device=torch.device("cpu"), prompt_ids=PROMPT)
        for t in OUTPUT:
            ts.observe(t)
        assert numpy_sampler(req).sample(x) == int(ts.sample(torch.from_numpy(x.copy())))


def test_penalties_by_hand() -> None:
    x = np.zeros(V, dtype=np.float32)
    x[[5, 17, 42, 7, 9]] = [2.0, -2.0, 3.0, 1.0, 1.0]
    rep = numpy_sampler({"repetition_penalty": 2.0}).penalised(x)
    assert rep[[5, 17, 42, 7, 9]].tolist() == [1.0, -4.0, 1.5, 0.5, 1.0]  # 9: never seen
    pf = numpy_sampler({"presence_penalty": 0.5, "frequency_penalty": 0.25}).penalised(x)
    # over the output only: 5 (prompt) untouched; 42 three times; 17 and 7 once
    assert pf[[5, 17, 42, 7]].tolist() == [2.0, -2.75, 1.75, 0.25]


def test_penalties_over_a_long_prompt_and_output() -> None:
    """1,500 distinct prompt ids and 200 generated ones: the tallies outgrow their first
    arrays and still penalise each id once, by its count."""
    prompt = list(range(0, 3000, 2))
    s = NumpySampler(
        resolve({"repetition_penalty": 2.0, "frequency_penalty": 0.5}),
        vocab_size=V,
        prompt_ids=prompt,
    )
    out = [1 + 2 * (i % 100) for i in range(200)]  # 100 odd ids, twice each
    for t in out:
        s.observe(t)
    x = logits(5)
    want = x.copy()
    ids = np.array(sorted(set(prompt) | set(out)))
    v = want[ids]
    want[ids] = np.where(v > 0, v / 2, v * 2)
    want[sorted(set(out))] -= np.float32(0.5 * 2)
    assert np.allclose(s.penalised(x), want, atol=1e-6)


def test_seeded_draws_repeat_and_differ_by_seed() -> None:
    x = logits(0)
    req = {"temperature": 1.0, "top_p": 0.95, "seed": 11}

    def draws(r: dict[str, Any]) -> list[int]:
        s = NumpySampler(resolve(r), vocab_size=V, prompt_ids=[])
        return [s.sample(x) for _ in range(30)]

    one = draws(req)
    assert one == draws(req)
    assert one != draws({**req, "seed": 12})
    assert len(set(one)) > 1


def test_draws_follow_the_distribution() -> None:
    x = np.full(V, -np.inf, dtype=np.float32)
    x[[3, 4, 5]] = np.log([0.2, 0.3, 0.5]).astype(np.float32)
    s = NumpySampler(resolve({"seed": 1}), vocab_size=V, prompt_ids=[])
    picks = np.bincount([s.sample(x) for _ in range(4000)], minlength=V)
    assert picks.sum() == picks[[3, 4, 5]].sum()
    assert np.allclose(picks[[3, 4, 5]] / 4000, [0.2, 0.3, 0.5], atol=0.03)


def test_the_logits_are_not_written() -> None:
    x = logits(3)
    before = x.copy()
    for req in CASES:
        numpy_sampler(req).sample(x)
    numpy_sampler({"temperature": 0, "repetition_penalty": 1.5}).sample(x)
    assert np.array_equal(x, before)


def test_non_finite_scores_are_a_fault() -> None:
    x = logits(0)
    check_finite(x, "step 0")
    x[7] = np.nan
    with pytest.raises(Fault, match="non-finite logits at step 3 of r1") as e:
        check_finite(x, "step 3 of r1")
    assert e.value.kind == "non_finite"
