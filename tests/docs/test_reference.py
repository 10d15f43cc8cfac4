"""docs/reference.md names every config key, metric, x-helexa header and route the code has.

Everything is found by introspection (config models, metric registries) or by scanning src/, so
a key or metric added without documentation fails here.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel

import helexa
import helexa.config
from helexa.metrics_core import MetricSet

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "helexa"
REFERENCE = (ROOT / "docs" / "reference.md").read_text()


def _modules(package: ModuleType, skip: tuple[str, ...] = ()) -> Iterator[ModuleType]:
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not info.name.startswith(skip):
            yield importlib.import_module(info.name)


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The pydantic model a field holds (directly, in a list, or optional), if any."""
    if typing.get_origin(annotation) is dict:
        return None
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _is_list(annotation: object) -> bool:
    return typing.get_origin(annotation) is list or any(
        typing.get_origin(a) is list for a in typing.get_args(annotation)
    )


def _keys(model: type[BaseModel], prefix: str = "", env: str | None = None) -> Iterator[tuple]:
    """(dotted key, env var name or None) for every leaf field, recursively."""
    for name, field in model.model_fields.items():
        key = prefix + name
        sub = _model_in(field.annotation)
        if sub is None:
            yield key, (env + name.upper()) if env else None
        elif _is_list(field.annotation):
            yield from _keys(sub, key + "[].")
        else:
            yield from _keys(sub, key + ".", env + name.upper() + "__" if env else None)


def _config_roots() -> list[tuple[type[BaseModel], str | None]]:
    """Top-level file models: defined in helexa.config, neither a field type nor a base class."""
    classes: dict[type[BaseModel], str | None] = {}
    for module in _modules(helexa.config):
        for obj in vars(module).values():
            ours = inspect.isclass(obj) and obj.__module__ == module.__name__
            if ours and issubclass(obj, BaseModel):
                classes[obj] = getattr(module, "ENV_PREFIX", None)
    used = {_model_in(f.annotation) for c in classes for f in c.model_fields.values()} | {
        base for c in classes for base in c.__mro__[1:]
    }
    return [(c, env) for c, env in classes.items() if c not in used]


def test_the_config_files_are_found() -> None:
    # cortex.toml, models.toml, neuron.toml, helexa-bench.toml
    assert len(_config_roots()) == 4


@pytest.mark.parametrize(
    ("root", "env"), _config_roots(), ids=lambda v: getattr(v, "__name__", str(v))
)
def test_every_config_key_and_env_name_is_documented(
    root: type[BaseModel], env: str | None
) -> None:
    missing = []
    for key, env_name in _keys(root, env=env):
        if f"`{key}`" not in REFERENCE:
            missing.append(key)
        if env_name is not None and f"`{env_name}`" not in REFERENCE:
            missing.append(env_name)
    assert not missing, f"docs/reference.md lacks: {missing}"


def test_every_metric_is_documented() -> None:
    for _ in _modules(helexa, skip=("helexa.neuron.engine",)):
        pass
    sets = MetricSet.__subclasses__()
    assert len(sets) >= 2, sets  # cortex and neuron
    names = [f.name for s in sets for f in s().families]
    missing = [n for n in names if f"`{n}`" not in REFERENCE]
    assert not missing, f"docs/reference.md lacks metrics: {missing}"


def test_every_helexa_header_is_documented() -> None:
    pattern = re.compile(r"x-helexa-[a-z0-9-]*[a-z0-9]")
    headers = {h for p in SRC.rglob("*.py") for h in pattern.findall(p.read_text())}
    assert len(headers) >= 8, headers
    missing = sorted(h for h in headers if f"`{h}`" not in REFERENCE)
    assert not missing, f"docs/reference.md lacks headers: {missing}"


def _routes(path: Path) -> Iterator[str]:
    """Paths registered with add_get/add_post literals, and the strings of *ROUTES constants."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        match node:
            case ast.Call(func=ast.Attribute(attr=attr), args=[ast.Constant(value=str(route)), *_]):
                if attr.startswith("add_"):
                    yield route
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id.endswith("ROUTES") for t in node.targets
        ):
            for sub in ast.walk(node.value):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    yield sub.value


def test_every_route_of_cortex_and_neuron_is_documented() -> None:
    routes = {
        re.sub(r"\{(\w+):[^}]*\}", r"{\1}", r)
        for room in ("cortex", "neuron")
        for p in (SRC / room).rglob("*.py")
        for r in _routes(p)
        if r.startswith("/")
    }
    assert {"/v1/chat/completions", "/models/load", "/metrics"} <= routes
    missing = sorted(r for r in routes if f"`{r}`" not in REFERENCE and f"`{r}?" not in REFERENCE)
    assert not missing, f"docs/reference.md lacks routes: {missing}"
