"""The compiled decode step: `compile` modes, the compiled path on CPU against eager (greedy,
fp32), and a compile that fails falls back to eager instead of failing the load."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from workerctl import WorkerClient  # noqa: E402

from helexa.neuron.engine.errors import LoadError  # noqa: E402
from helexa.neuron.engine.frames import Generate  # noqa: E402
from helexa.neuron.engine.generation import GenerationState  # noqa: E402
from helexa.neuron.engine.loader import LoadSpec  # noqa: E402
from helexa.neuron.engine.torch_compile import wanted  # noqa: E402
from helexa.neuron.engine.torch_engine import TorchEngine  # noqa: E402
from helexa.neuron.engine.torch_load import load  # noqa: E402

pytestmark = pytest.mark.torch
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_modes() -> None:
    assert [wanted(m, CUDA) for m in ("auto", "on", "off")] == [True, True, False]
    assert [wanted(m, CPU) for m in ("auto", "on", "off")] == [False, True, False]


@pytest.mark.parametrize(
    ("value", "mode"), [(None, "auto"), (True, "on"), (False, "off"), ("ON", "on"), ("off", "off")]
)
def test_the_load_spec_takes_modes_and_the_old_booleans(
    tmp_path: Path, value: object, mode: str
) -> None:
    (tmp_path / "config.json").write_text("{}")
    frame = {"path": str(tmp_path), "compile": value}
    assert LoadSpec.from_frame(frame).compile == mode


def test_an_unknown_mode_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(LoadError) as e:
        LoadSpec.from_frame({"path": str(tmp_path), "compile": "fast"})
    assert (e.value.status, e.value.code) == (400, "invalid_value")


def greedy(engine: TorchEngine, ids: list[int], n: int) -> GenerationState:
    gen = engine.start(Generate("g", ids, n, {"temperature": 0}))
    while not gen.finished:
        (result,) = engine.step([gen])
        assert result.error is None
    return gen


def check_against_eager(path: Path, device: str, hybrid: bool) -> None:
    def spec(mode: str) -> LoadSpec:
        return LoadSpec(
            path=str(path),
            served_id="q",
            quant="fp32",
            device=device,
            compile=mode,
            max_prompt_tokens=300,
            max_output_tokens=12,
        )

    eager, compiled = load(spec("off")), load(spec("auto" if device == "cuda" else "on"))
    assert (eager.compiled, compiled.compiled, compiled.static) == (False, True, True)
    assert compiled.info().compiled is True
    stats = torch._dynamo.utils.counters["stats"]
    graphs = stats["unique_graphs"]  # built at load: a request must not compile again
    first = [5, 6, 7, 8, 9, 10, 11]
    # a pooled cache reused, a cached prefix copied in, a longer cache (on the CPU a second
    # size for the same graph)
    for ids in (first, [12, 13], [*first, 14, 15], list(range(5, 285))):
        ours = greedy(compiled, ids, 12)
        assert ours.token_ids == greedy(eager, ids, 12).token_ids
        if ids[-1] == 15:  # hybrids keep no prefix on pooled static caches
            assert ours.cached_tokens == (0 if hybrid else len(first))
    assert stats["unique_graphs"] == graphs > 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen3", "qwen3_moe", "qwen3_next", "qwen3_5"])
def test_compiled_on_cpu_gives_the_eager_tokens(tiny_models: dict[str, Path], arch: str) -> None:
    check_against_eager(tiny_models[arch], "cpu", arch in ("qwen3_next", "qwen3_5"))


@pytest.mark.gpu
def test_compiled_on_cuda_gives_the_eager_tokens(tiny_qwen3: Path) -> None:
    check_against_eager(tiny_qwen3, "cuda", hybrid=False)


@pytest.mark.slow
def test_a_failed_compile_loads_eager(tiny_qwen3: Path) -> None:
    spec = {"path": str(tiny_qwen3), "compile": "on", "test_faults": {"compile_fails": True}}
    with WorkerClient.start(spec) as w:
        assert w.ready is not None
        assert (w.ready["compiled"], w.ready["static_cache"]) == (False, False)
        assert w.ready["max_batch"] > 1  # eager again: the batch path is back
        res = w.generate([5, 6, 7, 8], max_tokens=4)
    assert res.end["ev"] == "done", res.end
    assert res.end["completion_tokens"] == 4
