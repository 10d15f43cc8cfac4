"""End-to-end fixtures: tiny models built once per session, and real neuron + cortex stacks.

The SDK stack is session-scoped: the placement module also reads its worker's measured memory
to size a neuron that can hold only so many models. Other stacks are built in their modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from e2e_rig import Cortex, Neuron, Stack, build_tiny

from rig.no_torch import without_torch
from rig.require import require_module


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded tiny Qwen3, built once."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    return build_tiny(tmp_path_factory.mktemp("tiny") / "qa")


@pytest.fixture(scope="session")
def model_copies(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    """A folder for copies of the tiny model under other names (served as `local/<name>`)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def sdk_stack(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[Stack]:
    """One neuron pre-warming `local/qa`, and a cortex in front of it."""
    with one_node_stack(tmp_path_factory.mktemp("sdk_stack"), {"model_id": str(tiny_dir)}) as s:
        yield s


@pytest.fixture(scope="session")
def gguf_stack(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Iterator[Stack]:
    """The same checkpoint as an F32 GGUF, served by the llamacpp harness as `local/qa-F32`,
    on a host without torch: the neuron and its worker can't import torch or transformers."""
    require_module("llama_cpp", install="pip install 'helexa[llamacpp]'")
    require_module("gguf", install="pip install 'helexa[llamacpp]'")
    from fixtures.gguf import write_gguf

    root = tmp_path_factory.mktemp("gguf_stack")
    path = write_gguf(tiny_dir, root / "models" / "qa-F32.gguf", "F32")
    site = without_torch(root / "site")
    with one_node_stack(root, {"model_id": str(path), "harness": "llamacpp"}, site) as s:
        yield s


@contextmanager
def one_node_stack(
    root: Path, model: dict[str, Any], neuron_path: str | None = None
) -> Iterator[Stack]:
    """One neuron pre-warming `model` (started with PYTHONPATH `neuron_path` if given) and a
    cortex in front of it, stopped on exit."""
    neuron = Neuron(
        "n1",
        root,
        {
            "cpu_memory_mb": 8000,
            "admission": {"max_in_flight": 4, "max_queue_depth": 64},
            "default_models": [model],
        },
    )
    if neuron_path is not None:
        neuron.env["PYTHONPATH"] = neuron_path
    cortex = Cortex("cortex", root, [neuron])
    stack = Stack([neuron], cortex)
    try:
        neuron.start()
        cortex.start()
        neuron.wait_ready()
        cortex.wait_healthy(1)
        yield stack
    except BaseException:
        print(stack.failure_logs())
        raise
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def worker_rss_mb(sdk_stack: Stack) -> int:
    """What one loaded tiny model measures on this host (worker RSS on CPU)."""
    mb = sdk_stack.neuron.models()["local/qa"]["vram_used_mb"]
    assert isinstance(mb, int) and mb > 0
    return mb
