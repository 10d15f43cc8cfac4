"""Batched decoding in the torch harness: open generations share one forward per step, and each
gives exactly its solo greedy tokens (fp32), whatever joins or leaves the batch around it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from workerctl import WorkerClient  # noqa: E402
from workerctl import workers as started  # noqa: E402

from helexa.neuron.engine import harnesses  # noqa: E402
from helexa.neuron.engine.frames import Generate  # noqa: E402
from helexa.neuron.engine.loader import LoadSpec  # noqa: E402

pytestmark = pytest.mark.torch

ARCHS = ("qwen3", "qwen3_moe", "qwen3_next", "qwen3_5")
N = 24


def prompts(vocab: int = 500) -> list[list[int]]:
    """Four prompts of different lengths (the batch pads them to each other)."""
    g = torch.Generator().manual_seed(7)
    return [torch.randint(10, vocab, (n,), generator=g).tolist() for n in (5, 31, 12, 50)]


@pytest.fixture(scope="module")
def workers(tiny_models: dict[str, Path]) -> Iterator[dict[str, WorkerClient]]:
    specs = {a: {"path": str(tiny_models[a]), "served_id": a, "prefix_cache_mb": 0} for a in ARCHS}
    with started(specs) as ws:
        yield ws


def solo(w: WorkerClient, ps: list[list[int]], n: int = N) -> list[list[int]]:
    return [w.generate(p, max_tokens=n).ids for p in ps]


def drain(w: WorkerClient, rids: list[str]) -> list[dict[str, Any]]:
    return [w.collect(r).end for r in rids]


@pytest.mark.parametrize("arch", ARCHS)
def test_four_concurrent_streams_equal_their_solo_runs(
    arch: str, workers: dict[str, WorkerClient]
) -> None:
    w = workers[arch]
    assert w.ready is not None, w.load_failed
    assert (w.ready["max_batch"], w.ready["batching_refused"]) == (8, None)
    ps = prompts()
    alone = solo(w, ps)
    rids = [w.submit(p, max_tokens=N) for p in ps]
    assert [e["token_ids"] for e in drain(w, rids)] == alone


def test_sampling_stays_per_request_in_a_batch(workers: dict[str, WorkerClient]) -> None:
    w = workers["qwen3"]
    ps = prompts()[:3]
    kinds: list[dict[str, Any]] = [
        {"sampling": {"temperature": 0.9, "top_p": 0.9, "seed": 5, "repetition_penalty": 1.3}},
        {"sampling": {"temperature": 1.0, "seed": 9, "presence_penalty": 0.8}},
        {"sampling": {"temperature": 0}, "stop": ["e"]},
    ]
    alone = [w.generate(p, max_tokens=N, **k) for p, k in zip(ps, kinds, strict=True)]
    rids = [w.submit(p, max_tokens=N, **k) for p, k in zip(ps, kinds, strict=True)]
    together = [w.collect(r) for r in rids]
    assert [(r.ids, r.text) for r in together] == [(r.ids, r.text) for r in alone]
    assert together[0].ids != together[1].ids


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_next"])
def test_a_request_joins_mid_batch(arch: str, workers: dict[str, WorkerClient]) -> None:
    w = workers[arch]
    ps = prompts()
    alone = solo(w, ps, 40)
    first = [w.submit(p, max_tokens=40) for p in ps[:2]]
    for r in first:  # both are decoding when the others arrive
        assert w.next_for(r)["ev"] == "delta"
        assert w.next_for(r)["ev"] == "delta"
    late = [w.submit(p, max_tokens=40) for p in ps[2:]]
    assert [e["token_ids"] for e in drain(w, first + late)] == alone


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_5"])
def test_cancelling_one_of_four_leaves_the_others_alone(
    arch: str, workers: dict[str, WorkerClient]
) -> None:
    w = workers[arch]
    ps = prompts()
    alone = solo(w, ps, 40)
    rids = [w.submit(p, max_tokens=40) for p in ps]
    for r in rids:
        assert w.next_for(r)["ev"] == "delta"
    w.send({"op": "cancel", "id": rids[1]})
    ends = drain(w, rids)
    assert ends[1]["finish_reason"] == "cancelled"
    assert ends[1]["token_ids"] == alone[1][: len(ends[1]["token_ids"])]
    assert [ends[i]["token_ids"] for i in (0, 2, 3)] == [alone[i] for i in (0, 2, 3)]


def test_one_forward_per_step_for_every_open_generation(tiny_qwen3: Path) -> None:
    spec = LoadSpec.from_frame(
        {"path": str(tiny_qwen3), "served_id": "t", "quant": "fp32", "prefix_cache_mb": 0}
    )
    engine: Any = harnesses.load(spec, lambda _p: None)
    shapes: list[tuple[int, int]] = []

    def seen(_m: Any, _args: Any, kw: dict[str, Any]) -> None:
        shapes.append(tuple(kw["input_ids"].shape))

    engine.model.register_forward_pre_hook(seen, with_kwargs=True)
    ps = prompts()
    states = [
        engine.start(Generate(f"g{i}", p, max_tokens=6, sampling={"temperature": 0}))
        for i, p in enumerate(ps)
    ]
    engine.step(states)  # four prefills, one each
    assert shapes == [(1, len(p)) for p in ps]
    shapes.clear()
    for _ in range(3):
        engine.step(states)
    assert shapes == [(4, 1)] * 3
    shapes.clear()
    for s in states[1:3]:
        engine.cancel(s)
    engine.step(states)
    assert shapes == [(4, 1)]  # one forward for the two left, in the static batch's 4 slots
    assert len(engine.batch) == 2 and len(engine.batch.slots) == 4


def test_a_long_prefill_goes_a_chunk_a_step_while_others_decode(tiny_qwen3: Path) -> None:
    spec = LoadSpec.from_frame(
        {"path": str(tiny_qwen3), "served_id": "t", "quant": "fp32", "prefix_cache_mb": 0}
    )
    engine: Any = harnesses.load(spec, lambda _p: None)
    engine.prefill_chunk = 16
    g = torch.Generator().manual_seed(3)
    long = torch.randint(10, 500, (100,), generator=g).tolist()

    def gen(rid: str, prompt: list[int]) -> Any:
        return engine.start(Generate(rid, prompt, max_tokens=12, sampling={"temperature": 0}))

    def run(states: list[Any]) -> None:
        while not all(s.finished for s in states):
            engine.step([s for s in states if not s.finished])

    alone = gen("alone", long)
    run([alone])  # nothing else decodes: prefilled in one forward
    ps = prompts()[:2]
    first = [gen(f"d{i}", p) for i, p in enumerate(ps)]
    engine.step(first)
    late = gen("late", long)
    steps = 0
    while not late.token_ids:
        before = [len(s.token_ids) for s in first]
        engine.step([*first, late])
        assert [len(s.token_ids) for s in first] == [n + 1 for n in before]
        steps += 1
    assert steps == 7  # 100 tokens, 16 a step
    run([*first, late])
    assert late.token_ids == alone.token_ids


def test_a_failed_batched_forward_fails_its_rows_and_the_engine_goes_on(tiny_qwen3: Path) -> None:
    spec = LoadSpec.from_frame({"path": str(tiny_qwen3), "served_id": "t", "quant": "fp32"})
    engine: Any = harnesses.load(spec, lambda _p: None)
    ps = prompts()
    states = [
        engine.start(Generate(f"f{i}", p, max_tokens=6, sampling={"temperature": 0}))
        for i, p in enumerate(ps[:3])
    ]
    engine.step(states)  # prefills
    boom = RuntimeError("injected")

    def fail(_m: Any, _args: Any, kw: dict[str, Any]) -> None:
        if kw["input_ids"].shape[0] > 1:
            raise boom

    hook = engine.model.register_forward_pre_hook(fail, with_kwargs=True)
    results = engine.step(states)
    hook.remove()
    assert [r.error for r in results] == [boom] * 3
    assert all(s.finished for s in states) and len(engine.batch) == 0
    again = engine.start(Generate("g", ps[0], max_tokens=6, sampling={"temperature": 0}))
    while not again.finished:
        engine.step([again])
    assert len(again.token_ids) == 6


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_next"])
def test_pooled_static_caches_join_the_batch_as_copies(
    arch: str, tiny_models: dict[str, Path]
) -> None:
    spec = {"path": str(tiny_models[arch]), "served_id": "s", "static_cache": True}
    with WorkerClient.start(spec) as w:
        assert w.ready is not None and w.ready["static_cache"]
        assert (w.ready["max_batch"], w.ready["batching_refused"]) == (8, None)
        ps = prompts()[:3]
        alone = solo(w, ps, 12)
        rids = [w.submit(p, max_tokens=12) for p in ps]
        assert [e["token_ids"] for e in drain(w, rids)] == alone


def test_a_sliding_window_cache_refuses_batching() -> None:
    from transformers import DynamicCache, Qwen3Config

    from helexa.neuron.engine.torch_batch import refusal

    cfg = Qwen3Config(
        num_hidden_layers=2,
        use_sliding_window=True,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
    )
    assert refusal(DynamicCache(config=Qwen3Config(num_hidden_layers=2))) is None
    why = refusal(DynamicCache(config=cfg))
    assert why is not None and "DynamicSlidingWindowLayer" in why


def test_a_generation_past_max_batch_waits_for_another_to_end(tiny_qwen3: Path) -> None:
    spec = {"path": str(tiny_qwen3), "served_id": "m", "max_batch": 2, "prefix_cache_mb": 0}
    with WorkerClient.start(spec) as w:
        assert w.ready is not None and w.ready["max_batch"] == 2
        ps = prompts()[:3]
        alone = solo(w, ps, 12)
        rids = [w.submit(p, max_tokens=12, rid=f"m{i}") for i, p in enumerate(ps)]
        order: list[tuple[str, str]] = []
        ends: dict[str, dict[str, Any]] = {}
        while len(ends) < 3:
            f = w.recv()
            assert f is not None
            order.append((f["id"], f["ev"]))
            if f["ev"] == "done":
                ends[f["id"]] = f
        first_done = min(order.index((r, "done")) for r in rids[:2])
        assert all(i != "m2" for i, _ in order[:first_done])  # the third waited
        assert [ends[r]["token_ids"] for r in rids] == alone


@pytest.mark.parametrize("compile", ["off", "on"])
def test_a_generation_over_the_kv_budget_waits_for_another_to_end(
    tiny_qwen3: Path, compile: str
) -> None:
    # tiny Qwen3 fp32: 2 layers x (k + v) x 2 heads x 16 dims x 4 bytes = 512 bytes a token.
    # Each request may reach 800 positions: two rows (2 x 800 x 512 B) fit in 1 MB, three don't;
    # compiled, the static batch holds 2 slots x 1,024 positions (1 MB) for two, 4 for three.
    spec = {"path": str(tiny_qwen3), "served_id": "b", "kv_budget_mb": 1, "prefix_cache_mb": 0}
    with WorkerClient.start({**spec, "compile": compile}) as w:
        assert w.ready is not None and w.ready["compiled"] == (compile == "on")
        ps = prompts()[:3]
        budgeted = [800 - len(p) for p in ps]
        alone = [w.generate(p, max_tokens=12).ids for p in ps]
        a, b, c = (w.submit(p, max_tokens=m) for p, m in zip(ps, budgeted, strict=True))
        # the worker handles frames in order: once this error is back, it has seen `c`
        assert w.call({"op": "generate", "id": "sync", "prompt_ids": []})["ev"] == "error"
        for _ in range(5):
            assert w.next_for(a)["ev"] == "delta"
            assert w.next_for(b)["ev"] == "delta"
        assert not w.pending[c]  # queued, not started and not failed
        w.send({"op": "cancel", "id": a})
        first = w.next_for(c)
        assert first["ev"] == "delta"
        w.send({"op": "cancel", "id": b})
        w.send({"op": "cancel", "id": c})
        ends = drain(w, [a, b, c])
        assert [e["finish_reason"] for e in ends] == ["cancelled"] * 3
        for end, ref in zip(ends, alone, strict=True):
            n = min(len(end["token_ids"]), len(ref))
            assert end["token_ids"][:n] == ref[:n]


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_next"])
def test_rows_leaving_the_batch_feed_the_prefix_cache(
    arch: str, workers: dict[str, WorkerClient], tiny_models: dict[str, Path]
) -> None:
    cold = workers[arch]  # no prefix cache
    ps = prompts()
    firsts = solo(cold, ps, 10)
    follow = [p + out + [11, 12, 13] for p, out in zip(ps, firsts, strict=True)]
    alone = solo(cold, follow, 10)
    with WorkerClient.start({"path": str(tiny_models[arch]), "served_id": arch}) as w:
        rids = [w.submit(p, max_tokens=10) for p in ps]
        assert [e["token_ids"] for e in drain(w, rids)] == firsts
        rids = [w.submit(p, max_tokens=10) for p in follow]
        ends = drain(w, rids)
    assert [e["token_ids"] for e in ends] == alone
    # each row's cache went to the prefix cache as it left: prompt and all but its last token
    assert [e["cached_tokens"] for e in ends] == [
        len(p) + len(out) - 1 for p, out in zip(ps, firsts, strict=True)
    ]


@pytest.mark.parametrize(
    ("arch", "kind"),
    [("qwen3", "padded"), ("qwen3_next", "padded"), ("qwen3", "static"), ("qwen3", "exact")],
)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_rows_stay_within_tolerance_of_solo(
    arch: str, kind: str, dtype: str, tiny_models: dict[str, Path]
) -> None:
    """Teacher-forced on the solo greedy tokens, a padded batch's logits, or a static batch's
    (torch_static_batch; compiled's layout, and eager's attending only over the columns in use),
    stay within 0.05 of each row's solo logits (measured: 0.004 bf16,
    0.035 fp16 on the CPU)."""
    from transformers import AutoModelForCausalLM, DynamicCache

    from helexa.neuron.engine.generation import GenerationState
    from helexa.neuron.engine.torch_batch import DecodeBatch
    from helexa.neuron.engine.torch_static_batch import StaticBatch

    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=getattr(torch, dtype))
    ps, steps = prompts(), 12

    def prefill(p: list[int]) -> tuple[Any, Any]:
        cache = DynamicCache(config=model.config)
        out = model(input_ids=torch.tensor([p]), cache=cache, use_cache=True)
        return cache, out.logits[0, -1].float()

    with torch.inference_mode():
        solo_runs = []
        for p in ps:
            cache, logits = prefill(p)
            toks, seen = [int(logits.argmax())], []
            for _ in range(steps):
                out = model(input_ids=torch.tensor([[toks[-1]]]), cache=cache, use_cache=True)
                seen.append(out.logits[0, -1].float())
                toks.append(int(seen[-1].argmax()))
            solo_runs.append((toks, seen))
        cpu = torch.device("cpu")
        batch = (
            DecodeBatch(cpu)
            if kind == "padded"
            else StaticBatch(cpu, model.config, "cache", 8, None, False, kind == "exact")
        )
        for i, p in enumerate(ps):
            batch.join(GenerationState(str(i), p, steps, None, None), prefill(p)[0], len(p))  # type: ignore[arg-type]
        worst = 0.0
        for k in range(steps):
            got = batch.forward(model, [toks[k] for toks, _ in solo_runs])
            for row, (_, seen) in zip(got, solo_runs, strict=True):
                worst = max(worst, float((row - seen[k]).abs().max()))
    assert worst < 0.05


def test_a_compiled_lone_generation_stays_out_until_another_opens(tiny_qwen3: Path) -> None:
    """The compiled step is batch-1 over a pooled static cache: one generation alone keeps it;
    a second makes both join the batch (eager) as copies. The compiled function is stood in for
    by the model itself here (a real compile on the CPU takes tens of seconds)."""
    spec = {"path": str(tiny_qwen3), "served_id": "c", "quant": "fp32", "static_cache": True}
    engine: Any = harnesses.load(LoadSpec.from_frame(spec), lambda _p: None)
    engine._decode_fn = engine.model
    shapes: list[tuple[int, int]] = []
    engine.model.register_forward_pre_hook(
        lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    ps = prompts()[:2]

    def gen(rid: str, p: list[int]) -> Any:
        return engine.start(Generate(rid, p, max_tokens=10, sampling={"temperature": 0}))

    alone = [gen(f"a{i}", p) for i, p in enumerate(ps)]
    for s in alone:
        while not s.finished:
            engine.step([s])
    first = gen("f", ps[0])
    for _ in range(3):
        engine.step([first])
    assert first.cache is not engine.batch and len(engine.batch) == 0  # its own static cache
    assert first.slot is not None
    second = gen("s", ps[1])
    engine.step([first, second])  # second's prefill
    shapes.clear()
    engine.step([first, second])
    assert shapes == [(2, 1)] and first.slot is None  # the static cache went back to the pool
    while not (first.finished and second.finished):
        engine.step([s for s in (first, second) if not s.finished])
    assert [first.token_ids, second.token_ids] == [s.token_ids for s in alone]
