"""Tests that drive a real third-party client: skip when it is missing on a dev machine, fail
in CI (env CI set), where a missing client means `.ci/run` failed to install it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

# Where .ci/run caches the clients it installs outside pip (npm packages, Node).
CI_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "helexa-ci"


def require_missing(what: str, install: str) -> NoReturn:
    """Skip (locally) or fail (CI) because `what` is absent; `install` says how to get it."""
    msg = f"{what} is not installed ({install})"
    if os.environ.get("CI"):
        pytest.fail(f"{msg}; CI must install it (.ci/run)", pytrace=False)
    pytest.skip(msg)


def require_executable(*names: str, install: str) -> str:
    """The path of the first of `names` on PATH."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    require_missing(" or ".join(names), install)


def require_module(name: str, *, install: str) -> object:
    """Import and return module `name` (e.g. "llama_cpp")."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        require_missing(f"the Python module {name}", install)
