"""oneDNN-packed CPU linears: chosen by measurement per weight shape, checked against F.linear,
and a packed worker decodes (alone and batched) the same greedy tokens as a stock one."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from workerctl import WorkerClient  # noqa: E402

from helexa.neuron.engine import cpu_linear, harnesses  # noqa: E402
from helexa.neuron.engine.cpu_linear import ENV, PackedLinear, pack_linears  # noqa: E402
from helexa.neuron.engine.loader import LoadSpec  # noqa: E402

pytestmark = pytest.mark.torch


def mlp(dtype: Any = torch.float32) -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(48, 96), torch.nn.SiLU(), torch.nn.Linear(96, 48, bias=False)
    ).to(dtype)


@pytest.mark.parametrize("shape", [(1, 48), (1, 1, 48), (4, 1, 48), (2, 37, 48)])
def test_a_packed_linear_computes_what_the_stock_one_does(shape: tuple[int, ...]) -> None:
    stock = mlp()
    x = torch.randn(*shape)
    with torch.inference_mode():
        want = stock(x)
        packed = mlp()
        linear = packed[0]
        packed[0] = PackedLinear(linear, cpu_linear._pack(linear.weight))
        got = packed(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert packed[0].weight.device.type == "meta" and packed[0].weight.shape == (96, 48)
    assert "onednn packed" in repr(packed[0])


def test_forced_packing_swaps_every_fp32_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "packed")
    m = mlp()
    assert pack_linears(m) == 2
    assert [type(x) for x in m] == [PackedLinear, torch.nn.SiLU, PackedLinear]


def test_stock_keeps_the_model_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "stock")
    m = mlp()
    assert pack_linears(m) == 0
    assert type(m[0]) is torch.nn.Linear


@pytest.mark.parametrize(("packed_secs", "packs"), [(0.5, 2), (1.05, 2), (1.5, 0)])
def test_auto_packs_only_shapes_measured_faster(
    monkeypatch: pytest.MonkeyPatch, packed_secs: float, packs: int
) -> None:
    monkeypatch.setenv(ENV, "auto")
    timed: list[tuple[int, int]] = []

    def measure(linear: Any) -> tuple[float, float]:
        timed.append((linear.out_features, linear.in_features))
        return 1.0, packed_secs

    monkeypatch.setattr(cpu_linear, "measure", measure)
    m = mlp()
    assert pack_linears(m) == packs
    assert timed == [(96, 48), (48, 96)]  # once per weight shape


def test_auto_packs_what_its_real_measurement_chose(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Unmocked: each weight shape is timed once (through copies, from cold caches) and its
    linears are packed exactly when that shape's logged decision says so."""
    monkeypatch.setenv(ENV, "auto")
    m = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.Linear(32, 64), torch.nn.Linear(64, 32), torch.nn.SiLU()
    )
    with caplog.at_level(logging.INFO, "helexa.neuron.engine"):
        n = pack_linears(m)
    chose = {}
    for line in caplog.messages:
        if line.startswith("linear ") and " -> " in line:
            shape = tuple(int(d) for d in line.split()[1].split("x"))
            chose[shape] = line.endswith("packed")
    assert set(chose) == {(32, 64), (64, 32)}
    packed = [(x.out_features, x.in_features) for x in m if isinstance(x, PackedLinear)]
    assert n == len(packed) and all(chose[s] for s in packed)
    assert all(not chose[(x.out_features, x.in_features)] for x in m if type(x) is torch.nn.Linear)


def test_half_precision_linears_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "packed")
    m = mlp(torch.bfloat16)
    assert pack_linears(m) == 0


def test_a_kernel_that_disagrees_keeps_the_stock_linear(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(ENV, "packed")
    real = cpu_linear._packed_call
    monkeypatch.setattr(cpu_linear, "_packed_call", lambda x, p, b: real(x, p, b) + 1)
    m = mlp()
    with caplog.at_level(logging.WARNING, "helexa.neuron.engine"):
        assert pack_linears(m) == 0
    assert "disagrees" in caplog.text
    assert type(m[0]) is torch.nn.Linear


def test_an_unknown_mode_measures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "fastest")
    monkeypatch.setattr(cpu_linear, "measure", lambda _l: (1.0, 0.1))
    assert pack_linears(mlp()) == 2


def _load(path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> Any:
    monkeypatch.setenv(ENV, mode)
    spec = LoadSpec.from_frame(
        {"path": str(path), "served_id": "t", "quant": "fp32", "prefix_cache_mb": 0}
    )
    return harnesses.load(spec, lambda _p: None)


@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe"])
def test_a_packed_engine_gives_the_stock_logits(
    arch: str, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = torch.tensor([[5, 17, 99, 3, 250, 41]])
    out = {}
    for mode in ("stock", "packed"):
        engine = _load(tiny_models[arch], monkeypatch, mode)
        with torch.inference_mode():
            out[mode] = engine.model(input_ids=ids).logits
        kinds = {type(m) for m in engine.model.modules()}
        assert (PackedLinear in kinds) == (mode == "packed")
    torch.testing.assert_close(out["packed"], out["stock"], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def packed_worker(tiny_qwen3: Path) -> Iterator[WorkerClient]:
    spec = {"path": str(tiny_qwen3), "served_id": "t", "prefix_cache_mb": 0}
    w = WorkerClient.spawn(spec, env={ENV: "packed"})
    try:
        w.wait_load()
        yield w
    finally:
        w.close()


def test_a_packed_worker_batches_four_streams_to_their_solo_tokens(
    packed_worker: WorkerClient,
) -> None:
    w = packed_worker
    assert w.ready is not None, w.load_failed
    g = torch.Generator().manual_seed(7)
    ps = [torch.randint(10, 500, (n,), generator=g).tolist() for n in (5, 31, 12, 50)]
    alone = [w.generate(p, max_tokens=24).ids for p in ps]
    rids = [w.submit(p, max_tokens=24) for p in ps]
    assert [w.collect(r).ids for r in rids] == alone


def test_packing_lets_go_of_the_checkpoints_mapping(
    tiny_qwen3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What stays stock (embeddings, norms) is copied out of the safetensors mapping, which
    would otherwise keep the dropped weights' pages mapped and counted as the worker's memory."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv(ENV, "packed")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_qwen3), dtype=torch.float32)
    before = {name: p.data_ptr() for name, p in model.named_parameters()}
    assert pack_linears(model) > 0
    after = dict(model.named_parameters())
    assert after and all(after[name].data_ptr() != before[name] for name in after)
