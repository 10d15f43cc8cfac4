"""The harness registry: what /discovery advertises, found without importing an engine."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helexa.config.neuron import NeuronConfig
from helexa.neuron.discovery import available_harnesses
from helexa.neuron.engine import harnesses
from helexa.neuron.engine.errors import LoadError
from helexa.neuron.engine.loader import LoadSpec


@pytest.fixture
def third_harness() -> Iterator[None]:
    harnesses.register(harnesses.Harness("third", ("json",), "json:loads"))
    yield
    harnesses._REGISTRY.pop("third")


def test_a_registered_harness_is_advertised_when_its_modules_are_there(
    third_harness: None,
) -> None:
    assert "third" in harnesses.names()
    found = {"torch", "transformers", "json"}
    assert available_harnesses(NeuronConfig(), found.__contains__) == ["torch", "third"]
    assert available_harnesses(NeuronConfig(), {"json"}.__contains__) == ["third"]


def test_llamacpp_needs_llama_cpp_only() -> None:
    everything = {"torch", "transformers", "llama_cpp"}
    assert available_harnesses(NeuronConfig(), everything.__contains__) == ["torch", "llamacpp"]
    no_llama = {"torch", "transformers"}
    assert available_harnesses(NeuronConfig(), no_llama.__contains__) == ["torch"]
    assert available_harnesses(NeuronConfig(), {"llama_cpp"}.__contains__) == ["llamacpp"]


def test_listing_harnesses_imports_no_engine() -> None:
    code = (
        "import sys\n"
        "from helexa.config.neuron import NeuronConfig\n"
        "from helexa.neuron.discovery import available_harnesses\n"
        "available_harnesses(NeuronConfig())\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'llama_cpp' not in sys.modules, 'llama_cpp was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unknown_harness_is_refused_by_the_worker(tmp_path: Path) -> None:
    spec = LoadSpec(path=str(tmp_path), served_id="m", harness="nope")
    with pytest.raises(LoadError) as ei:
        harnesses.load(spec, lambda _p: None)
    assert (ei.value.status, ei.value.code) == (400, "unsupported_harness")
