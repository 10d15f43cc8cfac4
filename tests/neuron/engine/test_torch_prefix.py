"""The torch harness's prefix cache: its choices on synthetic caches (hit, miss, LRU eviction by
budget, refusals), and on the tiny models (fp32, greedy) that a cached run gives exactly the
tokens of a cold one on every architecture, in process and through a real worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from transformers import AutoTokenizer, DynamicCache  # noqa: E402
from workerctl import WorkerClient  # noqa: E402

from helexa.neuron.engine import cpu_linear  # noqa: E402
from helexa.neuron.engine.frames import Generate  # noqa: E402
from helexa.neuron.engine.llamacpp_prefix import common_prefix  # noqa: E402
from helexa.neuron.engine.loader import LoadSpec  # noqa: E402
from helexa.neuron.engine.torch_engine import TorchEngine  # noqa: E402
from helexa.neuron.engine.torch_load import load  # noqa: E402
from helexa.neuron.engine.torch_prefix import MIN_SNAPSHOT_TOKENS, PrefixCache  # noqa: E402

pytestmark = pytest.mark.torch

HEADS, DIM, LAYERS = 2, 4, 2
TOKEN_BYTES = LAYERS * 2 * HEADS * DIM * 4  # fp32 keys and values of one position


def kv(n: int, *, batch: int = 1, seed: int = 0) -> Any:
    """A DynamicCache holding `n` positions of random keys and values."""
    g = torch.Generator().manual_seed(seed)
    cache = DynamicCache()
    for i in range(LAYERS):
        k, v = (torch.randn(batch, HEADS, n, DIM, generator=g) for _ in range(2))
        cache.update(k, v, i)
    return cache


def keys(cache: Any, layer: int = 0) -> Any:
    return cache.layers[layer].keys


def test_hit_is_the_longest_prefix_and_leaves_a_token_to_prefill() -> None:
    pc = PrefixCache(1 << 20, exact=False)
    a, b = kv(10, seed=1), kv(6, seed=2)
    pc.put(list(range(10)), a)
    pc.put([0, 1, 2, 50, 51, 52], b)
    cache, n = pc.take([0, 1, 2, 3, 4, 99])
    assert n == 5
    assert torch.equal(keys(cache), keys(a)[..., :5, :])
    assert cache.get_seq_length() == 5
    cache, n = pc.take([0, 1, 2, 50, 51, 52, 53])
    assert n == 6 and torch.equal(keys(cache), keys(b))
    cache, n = pc.take(list(range(10)))  # the whole entry again: its last token is prefilled
    assert n == 9
    assert pc.take([7, 8, 9]) == (None, 0)  # no common prefix: a miss
    assert pc.take([0]) == (None, 0)  # one token: nothing may be skipped


def test_a_taker_growing_its_cache_leaves_the_entry_alone() -> None:
    pc = PrefixCache(1 << 20, exact=False)
    stored = kv(8)
    before = keys(stored).clone()
    pc.put(list(range(8)), stored)
    cache, n = pc.take([*range(8), 9])
    cache.update(torch.ones(1, HEADS, 1, DIM), torch.ones(1, HEADS, 1, DIM), 0)
    assert torch.equal(keys(stored), before)
    again, _ = pc.take([*range(8), 9])
    assert torch.equal(keys(again), before[..., :n, :])


def test_lru_eviction_keeps_the_cache_within_its_budget() -> None:
    pc = PrefixCache(2 * 8 * TOKEN_BYTES, exact=False)  # room for two 8-token entries
    for first in (100, 200):
        pc.put([first, *range(7)], kv(8))
    assert pc.nbytes == 2 * 8 * TOKEN_BYTES
    assert pc.take([100, 0, 1, 2])[1] == 3  # 100... is now the most recently used
    pc.put([300, *range(7)], kv(8))
    assert pc.nbytes <= pc.budget
    assert pc.take([200, 0, 1])[1] == 0  # the least recently used went
    assert pc.take([100, 0, 1])[1] == 2 and pc.take([300, 0, 1])[1] == 2
    pc.put(list(range(17)), kv(17))  # bigger than the whole budget: not kept
    assert pc.take(list(range(17)))[1] == 0 and pc.nbytes <= pc.budget


def test_an_extension_replaces_its_prefix_and_bad_caches_are_refused() -> None:
    pc = PrefixCache(1 << 20, exact=False)
    pc.put([1, 2, 3], kv(3))
    pc.put([1, 2, 3, 4, 5], kv(5))
    assert [e.tokens for e in pc.entries] == [[1, 2, 3, 4, 5]]
    pc.put([7, 8, 9], kv(2))  # the cache holds fewer positions than tokens named
    pc.put([7, 8], kv(2, batch=2))  # a batch cache, not one sequence's
    mixed = kv(4)
    mixed.update(torch.ones(1, HEADS, 1, DIM), torch.ones(1, HEADS, 1, DIM), 0)  # half a step
    pc.put([7, 8, 9, 10], mixed)
    assert [e.tokens for e in pc.entries] == [[1, 2, 3, 4, 5]]


def test_exact_mode_serves_only_whole_snapshots_as_copies() -> None:
    pc = PrefixCache(1 << 20, exact=True)
    stored = kv(6)
    pc.put(list(range(6)), stored)
    assert pc.take([0, 1, 2, 3, 9, 9, 9]) == (None, 0)  # shares 4 tokens: can't cut there
    assert pc.take(list(range(6))) == (None, 0)  # the whole prompt: no token left to prefill
    cache, n = pc.take([*range(6), 6])
    assert n == 6 and torch.equal(keys(cache), keys(stored))
    keys(cache).add_(1.0)  # a recurrent state is written in place: the entry must not see it
    assert not torch.equal(keys(cache), keys(stored))


def grow(cache: Any, n: int) -> None:
    for i in range(LAYERS):
        cache.update(torch.zeros(1, HEADS, n, DIM), torch.zeros(1, HEADS, n, DIM), i)


def test_exact_prefills_keep_snapshots_where_the_next_prompt_will_look() -> None:
    pc = PrefixCache(1 << 20, exact=True)
    prompt = list(range(300))
    assert PrefixCache(1 << 20, exact=False).snapshots_at(prompt, 0) == []
    assert pc.snapshots_at(prompt, 0) == [299]  # before the last token: the next turn
    assert pc.snapshots_at(prompt, 250) == [299]  # a prefill in chunks, further on
    pc.put([*range(150), 999], kv(151))  # another sequence: this one leaves it at 150
    assert pc.snapshots_at(prompt, 0) == [150, 299]
    assert pc.snapshots_at(prompt[:160], 0) == [150]
    assert pc.next_snapshot(prompt, 0) == 150
    cache = DynamicCache()
    grow(cache, 150)
    pc.keep(prompt[:150], cache)
    assert pc.next_snapshot(prompt, 150) == 299
    grow(cache, 10)  # the caller's cache goes on: the snapshot kept is a copy
    assert sorted(len(e.tokens) for e in pc.entries) == [150, 151]
    pc.put(prompt[: 299 - MIN_SNAPSHOT_TOKENS + 1], kv(299 - MIN_SNAPSHOT_TOKENS + 1))
    assert pc.snapshots_at(prompt, 0) == []  # 299 is too close to that snapshot
    snap, n = pc.take([*range(150), 5])
    assert n == 150 and snap.get_seq_length() == 150


# ---- the tiny models ------------------------------------------------------------------------

ARCHS = ("qwen3", "qwen3_moe", "qwen3_next", "qwen3_5")
STEPS = 8


def chat(path: Path, *turns: str) -> list[int]:
    """A conversation long enough for a hybrid's snapshot, ending in a generation prompt."""
    tok = AutoTokenizer.from_pretrained(path)
    messages = [{"role": "system", "content": "Read the file /etc/hosts carefully. " * 12}]
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return list(
        tok.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )


def greedy(engine: TorchEngine, ids: list[int]) -> tuple[list[int], int]:
    gen = engine.start(Generate("g", ids, STEPS, {"temperature": 0}))
    while not gen.finished:
        (result,) = engine.step([gen])
        assert result.error is None
    return gen.token_ids, gen.cached_tokens


@pytest.mark.parametrize(
    ("arch", "linears"),
    [(a, "auto") for a in ARCHS] + [("qwen3", "packed"), ("qwen3_moe", "packed")],
)
def test_cached_runs_equal_cold_runs(
    tiny_models: dict[str, Path], arch: str, linears: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also with the CPU linears packed for oneDNN (`auto` leaves the tiny models' stock)."""
    monkeypatch.setenv(cpu_linear.ENV, linears)
    path = tiny_models[arch]
    spec: dict[str, Any] = {"path": str(path), "served_id": arch, "quant": "fp32"}
    cold = load(LoadSpec(**spec, prefix_cache_mb=0))
    warm = load(LoadSpec(**spec, prefix_cache_mb=64))
    assert cold.prefix is None and warm.prefix is not None
    assert warm.prefix.exact is arch.startswith(("qwen3_next", "qwen3_5"))
    first = chat(path, "Hello, café 日本語 🙂")
    assert len(first) > MIN_SNAPSHOT_TOKENS + 20
    out, cached = greedy(warm, first)
    assert cached == 0 and out == greedy(cold, first)[0]
    # The agent's next turn: the whole conversation again, with the reply and a new message.
    reply = str(AutoTokenizer.from_pretrained(path).decode(out, skip_special_tokens=True))
    turns = [
        first + out[:-1] + [7, 8, 9],  # extends what the first request's cache holds
        chat(path, "Hello, café 日本語 🙂", reply or "ok", "And now?"),
        first,  # the same prompt again
        chat(path, "Something else entirely"),
    ]
    hybrid = warm.prefix.exact
    for ids in turns:
        ours, cached = greedy(warm, ids)
        assert ours == greedy(cold, ids)[0]
        # Only the system prompt is shared with the last one: a hybrid can't cut a state there
        # (it keeps one now, for the next prompt that leaves at the same point).
        assert 0 < cached < len(ids) or (hybrid and ids is turns[-1] and cached == 0)
    third = chat(path, "A third question")
    ours, cached = greedy(warm, third)
    assert ours == greedy(cold, third)[0]
    assert cached == common_prefix(third, turns[-1])
    assert warm.prefix.nbytes <= warm.prefix.budget
    # Again: the cache of its own earlier run serves all but the last token; a hybrid, which
    # can't cut that state back, the first request's final state (all but the 3 added tokens).
    ours, cached = greedy(warm, turns[0])
    assert cached == len(turns[0]) - (3 if hybrid else 1)


def test_a_hybrid_prefill_in_chunks_beside_a_batch_keeps_its_snapshots(
    tiny_models: dict[str, Path],
) -> None:
    path = tiny_models["qwen3_next"]
    spec: dict[str, Any] = {"path": str(path), "served_id": "n", "quant": "fp32"}
    cold = load(LoadSpec(**spec, prefix_cache_mb=0))
    warm = load(LoadSpec(**spec, prefix_cache_mb=64))
    assert warm.prefix is not None
    warm.prefill_chunk = 48
    other = warm.start(Generate("o", [5, 6, 7, 8], 30, {"temperature": 0}))
    warm.step([other])
    first = chat(path, "Hello, café 日本語 🙂")
    late = warm.start(Generate("l", first, STEPS, {"temperature": 0}))
    while not late.token_ids:  # a chunk a step while `other` decodes, pausing for a snapshot
        warm.step([other, late])
    assert not other.finished and late.cached_tokens == 0
    while not late.finished:
        warm.step([s for s in (other, late) if not s.finished])
    assert late.token_ids == greedy(cold, first)[0]
    assert [len(e.tokens) for e in warm.prefix.entries if e.tokens == first[:-1]] == [
        len(first) - 1
    ]
    reply = str(
        AutoTokenizer.from_pretrained(path).decode(late.token_ids, skip_special_tokens=True)
    )
    ids = chat(path, "Hello, café 日本語 🙂", reply or "ok", "And now?")
    ours, cached = greedy(warm, ids)
    assert cached == len(first) - 1 and ours == greedy(cold, ids)[0]


def test_pooled_static_caches_get_the_prefix_copied_in(tiny_models: dict[str, Path]) -> None:
    path = tiny_models["qwen3"]
    spec: dict[str, Any] = {
        "path": str(path),
        "served_id": "q",
        "quant": "fp32",
        "static_cache": True,
    }
    cold = load(LoadSpec(**spec, prefix_cache_mb=0))
    warm = load(LoadSpec(**spec))
    assert warm.static and warm.prefix is not None
    first = chat(path, "Hello")
    out, _ = greedy(warm, first)
    ids = first + out[:-1] + [7, 8, 9]
    ours, cached = greedy(warm, ids)  # in the pooled cache the first request gave back
    assert cached == len(first) + len(out) - 1
    assert ours == greedy(cold, ids)[0]
    # A hybrid's recurrent state lives in the pooled cache itself: no prefix cache there.
    hybrid = {**spec, "path": str(tiny_models["qwen3_next"])}
    assert load(LoadSpec(**hybrid)).prefix is None


@pytest.fixture(scope="module")
def worker(tiny_qwen3: Path) -> Iterator[WorkerClient]:
    spec = {"path": str(tiny_qwen3), "served_id": "tiny/qwen3", "prefix_cache_mb": 16}
    with WorkerClient.start(spec) as client:
        yield client


def test_a_worker_reports_cached_tokens(worker: WorkerClient, tiny_qwen3: Path) -> None:
    first = chat(tiny_qwen3, "Hello")
    a = worker.generate(first, max_tokens=4)
    assert "cached_tokens" not in a.end  # left out when 0
    b = worker.generate(chat(tiny_qwen3, "Hello", "Hi!", "Bye"), max_tokens=4)
    assert b.end["cached_tokens"] >= len(first) - 5  # the shared conversation so far
