"""The llamacpp harness in a real worker process, on GGUF files of the tiny checkpoints.

F32: greedy tokens identical to transformers `generate` on the same checkpoint. Q8_0: the same
first 8 greedy tokens (its logits stay within 2e-2 of fp32 on these prompts; measured ~9e-3).
Skipped without llama_cpp locally; in CI a missing llama_cpp fails (tests/rig/require.py).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from workerctl import WorkerClient, markers_whole  # noqa: E402

from rig.no_torch import without_torch  # noqa: E402
from rig.require import require_module  # noqa: E402

pytestmark = pytest.mark.torch

STEPS = 16
Q8_SAME = 8  # Q8_0: first tokens that must equal the fp32 reference


@pytest.fixture(scope="module", autouse=True)
def llama_cpp() -> None:
    require_module("llama_cpp", install="pip install 'helexa[llamacpp]' (README: llama.cpp)")


def spec(path: Path, **kw: Any) -> dict[str, Any]:
    return {"path": str(path), "served_id": "tiny/gguf", "harness": "llamacpp", "quant": None, **kw}


@pytest.fixture(scope="module")
def w(tiny_gguf: dict[str, Path]) -> Iterator[WorkerClient]:
    with WorkerClient.start(spec(tiny_gguf["qwen3-F32"])) as client:
        yield client
    assert client.proc.returncode == 0


def prompts() -> list[list[int]]:
    out = []
    for seed in (0, 1, 3):
        g = torch.Generator().manual_seed(seed)
        out.append(torch.randint(3, 600, (20,), generator=g).tolist())
    return out


def reference(hf: Path, ids: list[int], steps: int = STEPS) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    inp = torch.tensor([ids])
    out = model.generate(
        inp, attention_mask=torch.ones_like(inp), do_sample=False, max_new_tokens=steps
    )
    return list(out[0, len(ids) :].tolist())


def test_ready_info(w: WorkerClient) -> None:
    info = w.ready
    assert info is not None
    assert (info["harness"], info["quant"], info["model_type"]) == ("llamacpp", "F32", "qwen3")
    assert info["capabilities"] == ["text"]
    assert info["vram_used_mb"] > 0  # RSS on the CPU
    assert info["max_position_embeddings"] == 1024  # the file's trained context
    assert 2 in info["eos_token_ids"]


def test_f32_greedy_is_transformers(w: WorkerClient, tiny_qwen3: Path) -> None:
    for ids in prompts():
        ref = reference(tiny_qwen3, ids)
        assert len(ref) > Q8_SAME
        got = w.generate(ids, max_tokens=STEPS)
        assert got.end["ev"] == "done"
        assert got.ids == ref


def test_moe_f32_greedy_is_transformers(
    tiny_gguf: dict[str, Path], tiny_qwen3_moe_normed: Path
) -> None:
    ids = prompts()[0]
    ref = reference(tiny_qwen3_moe_normed, ids)
    with WorkerClient.start(spec(tiny_gguf["qwen3_moe-F32"])) as moe:
        assert moe.ready is not None and moe.ready["model_type"] == "qwen3moe"
        assert moe.generate(ids, max_tokens=STEPS).ids == ref


def test_q8_0_first_tokens(tiny_gguf: dict[str, Path], tiny_qwen3: Path) -> None:
    with WorkerClient.start(spec(tiny_gguf["qwen3-Q8_0"])) as q8:
        assert q8.ready is not None and q8.ready["quant"] == "Q8_0"
        for ids in prompts():
            ref = reference(tiny_qwen3, ids)
            assert q8.generate(ids, max_tokens=STEPS).ids[:Q8_SAME] == ref[:Q8_SAME]


def test_worker_serves_without_torch(
    w: WorkerClient, tiny_gguf: dict[str, Path], tmp_path: Path
) -> None:
    """A host with llama_cpp and no torch: the worker loads, answers greedy and seeded requests
    as the worker with torch installed does, and faults on non-finite logits."""
    env = {"PYTHONPATH": without_torch(tmp_path / "site")}
    ids = prompts()[2]
    seeded = {"temperature": 0.8, "top_p": 0.9, "repetition_penalty": 1.2, "seed": 3}
    arm = tmp_path / "arm"  # the fault fires once this file exists
    s = spec(tiny_gguf["qwen3-F32"], test_faults={"non_finite_at_step": 2, "arm_file": str(arm)})
    with WorkerClient.start(s, env=env) as bare:
        assert bare.generate(ids, max_tokens=4).ids == w.generate(ids, max_tokens=4).ids
        got = bare.generate(ids, max_tokens=STEPS, sampling=seeded)
        assert got.ids == w.generate(ids, max_tokens=STEPS, sampling=seeded).ids
        arm.touch()
        rid = bare.submit(ids, max_tokens=STEPS)
        with pytest.raises(EOFError, match="fault"):
            bare.collect(rid)
        assert bare.other[-1]["kind"] == "non_finite"


@pytest.mark.parametrize("arch", ["qwen3_next", "qwen3_5"])
def test_hybrid_f32_greedy_is_transformers(
    arch: str, tiny_gguf_hybrid: dict[str, tuple[Path, Path]]
) -> None:
    """Qwen3-Next and Qwen3.5 (Gated DeltaNet beside full attention) token for token; a prompt
    sharing a long prefix with an earlier one can't reuse a cut recurrent state, so it is
    prefilled in full and answers as a cold worker does. Such a worker opens 8 KV sequences (a
    recurrent state each): more requests at once wait for one, they are not refused."""
    gguf, hf = tiny_gguf_hybrid[arch]
    with WorkerClient.start(spec(gguf)) as hyb:
        assert hyb.ready is not None
        assert hyb.ready["model_type"] == {"qwen3_next": "qwen3next", "qwen3_5": "qwen35"}[arch]
        refs = [reference(hf, ids) for ids in prompts()]
        for ids, ref in zip(prompts(), refs, strict=True):
            assert hyb.generate(ids, max_tokens=STEPS).ids == ref
        rids = [hyb.submit(ids, max_tokens=STEPS) for ids in prompts() * 4]  # 12 > 8
        assert [hyb.collect(r).ids for r in rids] == refs * 4
        long = prompts()[0] * 15  # 300 tokens: kept after it ends
        hyb.generate([*long, 7], max_tokens=4)
        again = hyb.generate([*long, 9], max_tokens=8)
        assert again.end.get("cached_tokens", 0) == 0
        assert again.ids == reference(hf, [*long, 9], 8)


def test_q4_k_m_from_llama_cpp_quantizer(tiny_gguf_q4_k_m: Path, tiny_qwen3_wide: Path) -> None:
    """A real K-quant file (llama.cpp's quantizer, rows of 256): loads, reports Q4_K_M, greedy
    repeats. On random tiny weights the logits are nearly flat, so 4-bit noise flips the argmax
    early: the first token matches transformers on 5 of these 6 prompts (measured); >= 3 holds."""
    import gguf

    kinds = {t.tensor_type.name for t in gguf.GGUFReader(tiny_gguf_q4_k_m).tensors}
    assert {"Q4_K", "Q6_K"} <= kinds
    with WorkerClient.start(spec(tiny_gguf_q4_k_m)) as q4:
        assert q4.ready is not None and q4.ready["quant"] == "Q4_K_M"
        firsts = 0
        for seed in range(6):
            g = torch.Generator().manual_seed(seed)
            ids = torch.randint(3, 600, (20,), generator=g).tolist()
            got = q4.generate(ids, max_tokens=STEPS)
            assert got.ids == q4.generate(ids, max_tokens=STEPS).ids and len(got.ids) == STEPS
            firsts += got.ids[0] == reference(tiny_qwen3_wide, ids, 1)[0]
        assert firsts >= 3


def test_split_files_load_as_one(tiny_gguf: dict[str, Path], tiny_gguf_split: Path) -> None:
    ids = prompts()[1]
    outs = []
    for path in (tiny_gguf["qwen3-Q8_0"], tiny_gguf_split):
        with WorkerClient.start(spec(path)) as one:
            outs.append(one.generate(ids, max_tokens=STEPS).ids)
    assert outs[0] == outs[1] and len(outs[0]) > 0


def test_text_max_tokens_and_stop_strings(w: WorkerClient) -> None:
    ids = prompts()[0]
    full = w.generate(ids, max_tokens=STEPS)
    assert full.end["finish_reason"] == "length"
    assert full.end["completion_tokens"] == STEPS == sum(d["tokens"] for d in full.deltas)
    text = full.text
    assert len(text) > 6
    stop = text[3:6]
    cut = w.generate(ids, max_tokens=STEPS, stop=[stop])
    assert cut.end["finish_reason"] == "stop" and cut.end["stop_reason"] == stop
    assert cut.text == text[: text.index(stop)]


def test_cancel(w: WorkerClient) -> None:
    rid = w.submit(prompts()[2], max_tokens=500)
    first = w.next_for(rid)
    w.send({"op": "cancel", "id": rid})
    frames = [first]
    while frames[-1]["ev"] != "done":
        frames.append(w.next_for(rid))
    assert frames[-1]["finish_reason"] == "cancelled"
    assert w.generate(prompts()[0], max_tokens=2).end["ev"] == "done"  # still serving


def test_prefix_cache_reuses_kv_and_keeps_greedy(
    w: WorkerClient, tiny_gguf: dict[str, Path]
) -> None:
    g = torch.Generator().manual_seed(7)
    prefix = torch.randint(3, 600, (400,), generator=g).tolist()
    first = [*prefix, 11, 12, 13]
    second = [*prefix, 21, 22]
    a = w.generate(first, max_tokens=8)
    assert a.end.get("cached_tokens", 0) < len(prefix)
    b = w.generate(second, max_tokens=8)
    assert b.end["cached_tokens"] >= len(prefix)
    with WorkerClient.start(spec(tiny_gguf["qwen3-F32"])) as cold:
        c = cold.generate(second, max_tokens=8)
    assert c.end.get("cached_tokens", 0) == 0
    assert b.ids == c.ids and b.text == c.text


def test_short_sequences_are_not_kept(w: WorkerClient) -> None:
    """A finished sequence under KEEP_MIN tokens leaves the KV cache (every step would attend
    over its cells); the same prompt again is prefilled in full, with the same answer."""
    short = prompts()[2] * 5  # 100 tokens
    a = w.generate(short, max_tokens=8)
    b = w.generate(short, max_tokens=8)
    assert b.end.get("cached_tokens", 0) == 0
    assert a.ids == b.ids


def test_embeddings_are_last_token_normalised(w: WorkerClient, tiny_qwen3: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3, dtype=torch.float32).eval()
    inputs = [[5, 6, 7], [8, 9], [5, 6, 7]]
    reply = w.call({"op": "embed", "id": "e1", "inputs": inputs})
    assert reply["ev"] == "embedding" and reply["prompt_tokens"] == 8
    vecs = reply["vectors"]
    assert vecs[0] == vecs[2]
    long = [3 + i % 500 for i in range(700)]  # past the first embedding context (512)
    reply = w.call({"op": "embed", "id": "e2", "inputs": [long]})
    inputs.append(long)
    vecs += reply["vectors"]
    for seq, v in zip(inputs, vecs, strict=True):
        with torch.no_grad():
            h = model.model(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]
        ref = torch.nn.functional.normalize(h, dim=-1)
        # llama.cpp's F32 kernels round differently from torch's: ~1e-4 apart, measured
        assert torch.allclose(torch.tensor(v), ref, atol=5e-4)


def test_bad_token_id_is_a_request_error(w: WorkerClient) -> None:
    got = w.generate([1, 10_000], max_tokens=2)
    assert got.end["ev"] == "error" and got.end["code"] == "invalid_value"


def test_non_finite_logits_fault(tiny_gguf: dict[str, Path]) -> None:
    s = spec(tiny_gguf["qwen3-Q8_0"], test_faults={"non_finite_at_step": 1})
    with WorkerClient.start(s) as bad:
        rid = bad.submit(prompts()[0], max_tokens=5)
        with pytest.raises(EOFError, match="fault"):
            bad.collect(rid)
        assert bad.other[-1]["kind"] == "non_finite"
        assert bad.wait_exit() == 1


def test_crash_mid_stream_is_a_dead_worker(tiny_gguf: dict[str, Path]) -> None:
    s = spec(tiny_gguf["qwen3-F32"], test_faults={"exit_at_step": 3})
    with WorkerClient.start(s) as dying:
        rid = dying.submit(prompts()[0], max_tokens=10)
        frames = []
        with pytest.raises(EOFError):
            while True:
                frames.append(dying.next_for(rid))
        assert len(frames) <= 3 and all(f["ev"] == "delta" for f in frames)
        assert dying.wait_exit() == -signal.SIGKILL


def test_seeded_sampling_repeats_and_bad_params_are_refused(w: WorkerClient) -> None:
    ids = prompts()[1]
    sampling = {
        "temperature": 0.9,
        "top_k": 40,
        "top_p": 0.95,
        "min_p": 0.01,
        "repetition_penalty": 1.1,
        "presence_penalty": 0.2,
        "frequency_penalty": 0.1,
        "seed": 7,
    }
    one = w.generate(ids, max_tokens=STEPS, sampling=sampling)
    two = w.generate(ids, max_tokens=STEPS, sampling=sampling)
    assert one.ids == two.ids and one.end["completion_tokens"] > 0
    other = w.generate(ids, max_tokens=STEPS, sampling={**sampling, "seed": 8})
    greedy = w.generate(ids, max_tokens=STEPS)
    assert one.ids != greedy.ids or other.ids != greedy.ids  # it does sample
    bad = w.generate(ids, max_tokens=2, sampling={"top_p": 0})
    assert (bad.end["ev"], bad.end["code"], bad.end.get("param")) == (
        "error",
        "invalid_value",
        "top_p",
    )


def test_concurrent_requests_keep_their_own_sequences(w: WorkerClient) -> None:
    ps = prompts()
    alone = [w.generate(ids, max_tokens=STEPS).ids for ids in ps]
    rids = [w.submit(ids, max_tokens=STEPS) for ids in ps]
    together = [w.collect(rid).ids for rid in rids]
    assert together == alone


MARKERS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
SCRIPT = (
    "Let me see<think>step by step, naïve 日本語</think>\n\n"
    'Sure 🙂 <tool_call>{"name": "Read", "arguments": {"path": "/etc/hosts"}}</tool_call>'
)


def test_markers_and_utf8_through_the_gguf_vocabulary(tiny_gguf: dict[str, Path]) -> None:
    """Reasoning and tool-call markers reach the daemon whole, multi-byte text never split,
    through llama.cpp's detokenisation of the GGUF vocabulary."""
    s = spec(tiny_gguf["qwen3-F32"], test_faults={"script_text": SCRIPT})
    with WorkerClient.start(s) as scripted:
        res = scripted.generate([1, 5, 6], max_tokens=200, hold=MARKERS)
        assert res.text == SCRIPT and res.end["finish_reason"] == "stop"
        assert markers_whole(res.texts, MARKERS)
        assert not any("\ufffd" in t for t in res.texts)
        cut = scripted.generate([1, 5, 6], max_tokens=200, hold=MARKERS, stop=["by step"])
        assert cut.text == "Let me see<think>step "
