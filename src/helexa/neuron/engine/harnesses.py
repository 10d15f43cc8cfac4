"""The harnesses a worker can load, by name; what `/discovery` advertises as `harnesses`.

A harness is registered with the modules it needs and the dotted name of its loader, so the
daemon can list the usable ones (`importlib.util.find_spec`, nothing imported) and only the
worker ever imports the engine. llama.cpp is the second (`llamacpp`, GGUF files; no torch).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from helexa.neuron.engine.errors import LoadError
from helexa.neuron.engine.frames import Progress
from helexa.neuron.engine.loader import LoadSpec

if TYPE_CHECKING:
    from helexa.neuron.engine.base import Engine

OnProgress = Callable[[Progress], None]


class Loader(Protocol):
    def __call__(self, spec: LoadSpec, progress: OnProgress) -> Engine: ...


@dataclass(frozen=True, slots=True)
class Harness:
    name: str
    requires: tuple[str, ...]  # importable modules it needs
    loader: str  # "module:function", imported only in the worker


_REGISTRY: dict[str, Harness] = {}


def register(h: Harness) -> None:
    _REGISTRY[h.name] = h


def names() -> list[str]:
    return list(_REGISTRY)


def usable(found: Callable[[str], bool]) -> list[str]:
    """Registered harnesses whose modules `found` says are installed."""
    return [h.name for h in _REGISTRY.values() if all(found(m) for m in h.requires)]


def load(spec: LoadSpec, progress: OnProgress) -> Engine:
    """Import the spec's harness (in the worker only) and load its model with it."""
    harness = _REGISTRY.get(spec.harness)
    if harness is None:
        raise LoadError(
            400, "unsupported_harness", f"harness '{spec.harness}' is not known to this worker"
        )
    module, _, attr = harness.loader.partition(":")
    loader: Loader = getattr(importlib.import_module(module), attr)
    return loader(spec, progress)


register(Harness("torch", ("torch", "transformers"), "helexa.neuron.engine.torch_load:load"))
register(Harness("llamacpp", ("llama_cpp",), "helexa.neuron.engine.llamacpp_load:load"))
