"""The worker on CUDA (gpu tier: skipped with a reason where CUDA is missing): the tiny Qwen3
loads on the GPU in the default quant for its compute capability and generates."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from workerctl import WorkerClient  # noqa: E402

from helexa.wire.harness import default_quant  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.gpu]


def test_tiny_qwen3_loads_and_generates_on_cuda(tiny_qwen3: Path) -> None:
    major, minor = torch.cuda.get_device_capability(0)
    spec = {"path": str(tiny_qwen3), "served_id": "tiny/qwen3", "device": "cuda", "quant": None}
    with WorkerClient.start(spec) as w:
        info = w.ready
        assert info is not None
        assert info["quant"] == default_quant("cuda", f"{major}.{minor}")
        assert info["vram_used_mb"] > 0
        res = w.generate([5, 6, 7, 8, 9], max_tokens=8)
    assert res.end["ev"] == "done", res.end
    assert res.end["finish_reason"] in ("length", "stop")
    assert 1 <= res.end["completion_tokens"] <= 8
    assert w.proc.returncode == 0
