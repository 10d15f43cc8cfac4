"""The static decode batch (torch_static_batch): rows in the slots of one preallocated cache give
exactly their solo greedy tokens (fp32) whatever joins, leaves, grows or shrinks around them,
eager and compiled; the compiled forward is built at load and never again."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from workerctl import WorkerClient  # noqa: E402

from helexa.neuron.engine.frames import Generate  # noqa: E402
from helexa.neuron.engine.generation import GenerationState  # noqa: E402
from helexa.neuron.engine.kv_budget import KvBudget  # noqa: E402
from helexa.neuron.engine.loader import LoadSpec  # noqa: E402
from helexa.neuron.engine.torch_batch import DecodeBatch  # noqa: E402
from helexa.neuron.engine.torch_engine import PREFILL_CHUNK, TorchEngine  # noqa: E402
from helexa.neuron.engine.torch_load import load  # noqa: E402
from helexa.neuron.engine.torch_static_batch import StaticBatch, bucket  # noqa: E402

pytestmark = pytest.mark.torch


def prompts(*lengths: int, seed: int = 7) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, 500, (n,), generator=g).tolist() for n in lengths]


def engine(path: Path, compile: str = "off", fixed: bool = False, **spec: Any) -> TorchEngine:
    """With compile off, the eager static batch (attending over the columns in use); `fixed`
    lays it out as compiled on CUDA (the context cap, buckets viewing one storage)."""
    frame = {"path": str(path), "served_id": "s", "quant": "fp32", "compile": compile}
    eng = load(LoadSpec.from_frame({"prefix_cache_mb": 0, **frame, **spec}))
    assert isinstance(eng.batch, StaticBatch) and eng.batch.exact == (compile == "off")
    if fixed:
        cfg, cap = eng.model.config, eng._context_cap()
        eng.batch = StaticBatch(eng.device, cfg, eng._cache_kw, eng.spec.max_batch, cap, fixed)
    return eng


def gen(eng: TorchEngine, rid: str, prompt: list[int], n: int = 24) -> GenerationState:
    return eng.start(Generate(rid, prompt, max_tokens=n, sampling={"temperature": 0}))


def run(eng: TorchEngine, states: list[GenerationState]) -> None:
    while not all(s.finished for s in states):
        for r in eng.step([s for s in states if not s.finished]):
            assert r.error is None, r.error


def solo(eng: TorchEngine, ps: list[list[int]], n: int = 24) -> list[list[int]]:
    out = []
    for i, p in enumerate(ps):
        s = gen(eng, f"solo{i}", p, n)
        run(eng, [s])
        out.append(s.token_ids)
    return out


@pytest.fixture(scope="module")
def eager(tiny_qwen3: Path) -> TorchEngine:
    return engine(tiny_qwen3)


@pytest.fixture(scope="module")
def compiled(tiny_qwen3: Path) -> TorchEngine:
    eng = engine(tiny_qwen3, "on", max_prompt_tokens=600, max_output_tokens=300)
    assert eng.compiled and eng._decode_fn is not None
    return eng


@pytest.fixture(params=["eager", "compiled"])
def both(request: pytest.FixtureRequest) -> TorchEngine:
    eng: TorchEngine = request.getfixturevalue(request.param)
    return eng


def test_four_rows_equal_their_solo_runs(both: TorchEngine) -> None:
    ps = prompts(5, 31, 12, 50)
    alone = solo(both, ps)
    shapes: list[tuple[int, ...]] = []

    def seen(_m: Any, _a: Any, kw: dict[str, Any]) -> None:
        shapes.append(tuple(kw["input_ids"].shape))

    hook = both.model.register_forward_pre_hook(seen, with_kwargs=True)
    step_fn = both._decode_fn
    if step_fn is not None:  # compiled: the batch goes through the compiled function

        def counted(**kw: Any) -> Any:
            hook.remove()  # (a compiled forward may still run the module's hooks)
            seen(None, None, kw)
            return step_fn(**kw)

        both._decode_fn = counted
    states = [gen(both, f"r{i}", p) for i, p in enumerate(ps)]
    try:
        run(both, states)
    finally:
        hook.remove()
        both._decode_fn = step_fn
    assert [s.token_ids for s in states] == alone
    assert shapes.count((4, 1)) == 23  # one forward for all four, each step after the first


def test_simultaneous_arrivals_take_no_pooled_caches(compiled: TorchEngine) -> None:
    """Prefilled for a batch, they get caches of their own size: on CUDA every pooled cache is
    the whole context, more than a few arrivals at once could have."""
    assert compiled._pool is not None
    ps = prompts(5, 31, 12)
    alone = solo(compiled, ps)
    acquire, taken = compiled._pool.acquire, []

    def counted(n: int) -> Any:
        taken.append(n)
        return acquire(n)

    compiled._pool.acquire = counted  # type: ignore[method-assign]
    states = [gen(compiled, f"a{i}", p) for i, p in enumerate(ps)]
    try:
        compiled.step(states)  # three prefills in one step
        assert taken == [] and all(s.slot is None for s in states)
        run(compiled, states)
    finally:
        compiled._pool.acquire = acquire  # type: ignore[method-assign]
    assert [s.token_ids for s in states] == alone


def test_the_last_row_of_a_batch_goes_on_alone(both: TorchEngine) -> None:
    from transformers import DynamicCache

    ps = prompts(5, 31)
    alone = solo(both, ps, 20)
    short, long = gen(both, "s", ps[0], 6), gen(both, "l", ps[1], 20)
    while not short.finished:  # both decode together until the short one ends
        both.step([short, long])
    assert len(short.token_ids) == 6 and len(both.batch or []) == 0
    if both.compiled:  # back on the batch-1 compiled step, in a pooled static cache
        assert long.slot is not None and not isinstance(long.cache, DynamicCache)
    else:  # eager, with its own cache, and it stays out of the batch (one row per forward)
        assert long.slot is None and isinstance(long.cache, DynamicCache)
    shapes: list[tuple[int, ...]] = []
    hook = both.model.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        run(both, [long])
    finally:
        hook.remove()
    if not both.compiled:
        assert set(shapes) == {(1, 1)}
    assert [short.token_ids, long.token_ids] == [alone[0][:6], alone[1]]


def test_a_long_prefill_goes_in_chunks_beside_a_lone_generation(eager: TorchEngine) -> None:
    eager.prefill_chunk = 16
    try:
        lone = gen(eager, "lone", prompts(5)[0], 30)
        for _ in range(3):
            eager.step([lone])
        assert lone.cache is not eager.batch  # alone: out of the batch
        late, steps = gen(eager, "late", prompts(100, seed=3)[0], 5), 0
        while not late.token_ids:
            before = len(lone.token_ids)
            eager.step([lone, late])
            assert len(lone.token_ids) == before + 1  # it keeps decoding meanwhile
            steps += 1
        assert steps == 7  # 100 tokens, 16 a step
        run(eager, [lone, late])
    finally:
        eager.prefill_chunk = PREFILL_CHUNK


def test_a_longer_row_joining_mid_batch_shifts_the_others(both: TorchEngine) -> None:
    ps = prompts(5, 12, 300, 7)
    alone = solo(both, ps, 30)
    first = [gen(both, f"f{i}", p, 30) for i, p in enumerate(ps[:2])]
    for _ in range(6):
        both.step(first)
    batch = both.batch
    assert isinstance(batch, StaticBatch) and len(batch) == 2 and batch.w < 300
    late = [gen(both, f"l{i}", p, 30) for i, p in enumerate(ps[2:])]
    states = first + late
    run(both, states)
    assert [s.token_ids for s in states] == alone


def test_cancelling_one_of_four_leaves_the_others_alone(eager: TorchEngine) -> None:
    ps = prompts(5, 31, 12, 50)
    alone = solo(eager, ps, 30)
    states = [gen(eager, f"c{i}", p, 30) for i, p in enumerate(ps)]
    for _ in range(5):
        eager.step(states)
    eager.cancel(states[1])
    run(eager, states)
    assert states[1].token_ids == alone[1][: len(states[1].token_ids)]
    assert [states[i].token_ids for i in (0, 2, 3)] == [alone[i] for i in (0, 2, 3)]


def test_buckets_grow_with_the_rows_and_shrink_when_few_are_left(eager: TorchEngine) -> None:
    ps = prompts(*range(4, 12), seed=3)
    lengths = [6, 8, 10, 12, 14, 16, 18, 40]  # they end one or two apart
    alone = [solo(eager, [p], n)[0] for p, n in zip(ps, lengths, strict=True)]
    batch = eager.batch
    assert isinstance(batch, StaticBatch)
    states: list[GenerationState] = []
    slots: list[int] = []
    for i, (p, n) in enumerate(zip(ps, lengths, strict=True)):
        if i in (1, 2, 4):  # join two, then one, then the other five
            for _ in range(2):
                eager.step(states)
                slots.append(len(batch.slots))
        states.append(gen(eager, f"b{i}", p, n))
    while not all(s.finished for s in states):
        eager.step([s for s in states if not s.finished])
        slots.append(len(batch.slots))
    assert [s.token_ids for s in states] == alone
    seen = [n for i, n in enumerate(slots) if n and (i == 0 or slots[i - 1] != n)]
    assert seen == [2, 4, 8, 4]  # 8 rows, then 2 left of 8, then the last one goes on alone
    assert batch.cache is None  # freed when the last row left


def test_the_cap_grows_or_the_shared_padding_is_cut(eager: TorchEngine) -> None:
    batch = eager.batch
    assert isinstance(batch, StaticBatch)
    long, a, b = prompts(200, 5, 7, seed=1)  # no EOS within 80 tokens
    alone = solo(eager, [long, a, b], 80)
    assert [len(t) for t in alone] == [80] * 3
    # the long row leaves early: the others' shared padding is cut instead of a bigger cache
    states = [gen(eager, "long", long, 8), gen(eager, "a", a, 80), gen(eager, "b", b, 80)]
    caps: list[int] = []
    while not all(s.finished for s in states):
        eager.step([s for s in states if not s.finished])
        caps.append(batch.cap)
    assert [s.token_ids for s in states] == [alone[0][:8], *alone[1:]]
    assert set(caps) - {0} == {256}
    # both run long: the cache doubles
    states = [gen(eager, "long2", long, 80), gen(eager, "a2", a, 80)]
    caps.clear()
    while not all(s.finished for s in states):
        eager.step([s for s in states if not s.finished])
        caps.append(batch.cap)
    assert [s.token_ids for s in states] == alone[:2]
    assert set(caps) - {0} == {256, 512}


def test_one_storage_at_the_context_cap_as_on_cuda(tiny_qwen3: Path) -> None:
    eng = engine(tiny_qwen3, fixed=True, max_prompt_tokens=300, max_output_tokens=60)
    batch = eng.batch
    assert isinstance(batch, StaticBatch) and batch.fixed
    ps = prompts(300, seed=13) + prompts(200, 5, 7, seed=1)[1:] + prompts(31, 12, 50, 9, 20)
    lengths = [10, 70, 70, 12, 14, 16, 18, 20]  # two rows reach the cap together
    alone = [solo(eng, [p], n)[0] for p, n in zip(ps, lengths, strict=True)]
    states = [gen(eng, f"x{i}", p, n) for i, (p, n) in enumerate(zip(ps, lengths, strict=True))]
    for _ in range(3):  # the long row and another first, then six more
        eng.step(states[:2])
    assert [len(t) for t in alone[1:3]] == [70, 70]
    storage = batch._store.layers[0].keys.data_ptr()
    seen: set[tuple[int, int, int]] = set()
    ws: list[int] = []
    while not all(s.finished for s in states):  # 8 rows at once, then the long one's padding
        for r in eng.step([s for s in states if not s.finished]):  # is cut at the cap
            assert r.error is None, r.error
        if batch.cache is not None:
            keys = batch.cache.layers[0].keys
            seen.add((len(batch.slots), batch.cap, keys.data_ptr()))
            ws.append(batch.w)
    assert [s.token_ids for s in states] == alone
    assert {(n, cap) for n, cap, _ in seen} == {(2, 360), (4, 360), (8, 360)}
    assert {ptr for _, _, ptr in seen} == {storage}  # every bucket a view of one storage
    assert any(b < a for a, b in itertools.pairwise(ws))  # the padding was cut


def test_a_leaving_row_keeps_its_own_cache_for_the_prefix_cache(tiny_qwen3: Path) -> None:
    eng = engine(tiny_qwen3, prefix_cache_mb=64)
    cold = engine(tiny_qwen3)
    ps = prompts(5, 31, 12, 50)
    firsts = solo(cold, ps, 10)
    follow = [p + out + [11, 12, 13] for p, out in zip(ps, firsts, strict=True)]
    alone = solo(cold, follow, 10)
    states = [gen(eng, f"k{i}", p, 10) for i, p in enumerate(ps)]
    run(eng, states)
    assert [s.token_ids for s in states] == firsts
    assert eng.prefix is not None and len(eng.prefix.entries) == 4
    for e, p, out in zip(eng.prefix.entries, ps, firsts, strict=True):
        assert e.tokens == (p + out)[:-1]  # the row's own columns, without its padding
    states = [gen(eng, f"n{i}", p, 10) for i, p in enumerate(follow)]
    run(eng, states)
    assert [s.token_ids for s in states] == alone
    assert [s.cached_tokens for s in states] == [
        len(p) + len(out) - 1 for p, out in zip(ps, firsts, strict=True)
    ]


def test_a_moe_model_batches_in_a_static_cache(tiny_qwen3_moe: Path) -> None:
    eng = engine(tiny_qwen3_moe)
    ps = prompts(5, 31, 12, 50)
    alone = solo(eng, ps)
    states = [gen(eng, f"m{i}", p) for i, p in enumerate(ps)]
    run(eng, states)
    assert [s.token_ids for s in states] == alone


def test_hybrid_and_sliding_window_models_keep_the_padded_batch(
    tiny_qwen3_next: Path,
) -> None:
    from transformers import DynamicCache, Qwen3Config

    from helexa.neuron.engine.torch_static_batch import static_refusal

    eng = load(LoadSpec.from_frame({"path": str(tiny_qwen3_next), "compile": "on"}))
    assert isinstance(eng.batch, DecodeBatch)  # linear-attention layers have no columns
    cfg = Qwen3Config(num_hidden_layers=2, use_sliding_window=True, sliding_window=16)
    cfg.layer_types = ["sliding_attention", "full_attention"]
    cfg._attn_implementation = "sdpa"
    why = static_refusal(DynamicCache(config=cfg), cfg)
    assert why is not None and "DynamicSlidingWindowLayer" in why


def test_the_kv_budget_counts_the_whole_block() -> None:
    cpu = torch.device("cpu")
    cfg = object()
    grows = StaticBatch(cpu, cfg, cache_kw="cache", max_batch=8, context_cap=4096, fixed=False)
    assert [bucket(n, 8) for n in (1, 2, 3, 5, 8)] == [2, 2, 4, 8, 8]
    assert grows.held(3, 300) == (4, 512)
    fixed = StaticBatch(cpu, cfg, cache_kw="cache", max_batch=6, context_cap=4096, fixed=True)
    assert fixed.held(2, 300) == (8, 4096)
    kv = KvBudget(100, 0, 4 * 512 * 100, 8, True, shape=grows.held)
    assert kv.bytes_for([300, 100, 50]) == 4 * 512 * 100
    running = [GenerationState(str(i), [1] * 200, 100, None, None) for i in range(3)]  # type: ignore[arg-type]
    assert kv.admits(GenerationState("x", [1] * 200, 100, None, None), running)  # type: ignore[arg-type]
    assert not kv.admits(GenerationState("y", [1] * 500, 100, None, None), running)  # type: ignore[arg-type]


@pytest.mark.slow
def test_changing_batches_do_not_recompile_after_the_load(tiny_qwen3: Path) -> None:
    # a fresh load: other model classes loaded in this process since the module's compiled
    # engine change a transformers registry its graphs guard on (a worker holds one model)
    compiled = engine(tiny_qwen3, "on", max_prompt_tokens=600, max_output_tokens=300)
    assert isinstance(compiled.batch, StaticBatch)
    assert compiled.kv.shape == compiled.batch.held  # admission counts the whole block
    stats = torch._dynamo.utils.counters["stats"]
    graphs = stats["unique_graphs"]
    assert graphs > 0
    ps = prompts(5, 31, 12, 50, 7, 9, 20, 3, seed=5)
    alone = solo(compiled, ps[:5], 12)
    for n in (2, 3, 4, 5):  # within a bucket and across the warmed ones
        states = [gen(compiled, f"n{n}.{i}", p, 12) for i, p in enumerate(ps[:n])]
        run(compiled, states)
        assert [s.token_ids for s in states] == alone[:n]
    long = gen(compiled, "long", prompts(300)[0], 40)  # a bigger cache: the same graph
    short = gen(compiled, "short", ps[0], 10)  # then the long one goes on alone
    caps = set()
    while not (long.finished and short.finished):
        compiled.step([s for s in (long, short) if not s.finished])
        caps.add(compiled.batch.cap if isinstance(compiled.batch, StaticBatch) else 0)
    assert 512 in caps
    assert stats["unique_graphs"] == graphs


@pytest.mark.slow
def test_a_failed_compile_falls_back_to_an_eager_batch(
    tiny_qwen3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HELEXA_TEST_FAULTS", "1")
    spec = {"path": str(tiny_qwen3), "quant": "fp32", "compile": "on", "prefix_cache_mb": 0}
    eng = load(LoadSpec.from_frame({**spec, "test_faults": {"compile_fails": True}}))
    assert not eng.compiled and isinstance(eng.batch, StaticBatch) and eng.batch.exact
    ps = prompts(5, 31, 12, 50)
    alone = solo(eng, ps)
    states = [gen(eng, f"e{i}", p) for i, p in enumerate(ps)]
    run(eng, states)
    assert [s.token_ids for s in states] == alone


@pytest.mark.slow
def test_a_batch_step_that_fails_to_build_leaves_the_compiled_batch_1_step(
    tiny_qwen3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_memory(*_a: Any, **_k: Any) -> Any:
        raise torch.OutOfMemoryError("test: no room for the largest bucket")

    monkeypatch.setattr(StaticBatch, "_alloc", no_memory)
    eng = load(LoadSpec.from_frame({"path": str(tiny_qwen3), "quant": "fp32", "compile": "on"}))
    assert eng.compiled and isinstance(eng.batch, DecodeBatch)
    ps = prompts(5, 31, 12, 50)
    alone = solo(eng, ps)
    states = [gen(eng, f"d{i}", p) for i, p in enumerate(ps)]
    run(eng, states)
    assert [s.token_ids for s in states] == alone


@pytest.fixture(scope="module")
def compiled_worker(tiny_qwen3: Path) -> Iterator[WorkerClient]:
    spec = {"path": str(tiny_qwen3), "served_id": "w", "compile": "on", "prefix_cache_mb": 0}
    with WorkerClient.start(spec) as w:
        yield w


@pytest.mark.slow
def test_four_streams_through_a_compiled_worker_equal_their_solo_runs(
    compiled_worker: WorkerClient,
) -> None:
    w = compiled_worker
    assert w.ready is not None, w.load_failed
    assert (w.ready["compiled"], w.ready["max_batch"]) == (True, 8)
    ps = prompts(5, 31, 12, 50)
    alone = [w.generate(p, max_tokens=24).ids for p in ps]
    rids = [w.submit(p, max_tokens=24) for p in ps]
    assert [w.collect(r).ids for r in rids] == alone
