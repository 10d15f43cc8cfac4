"""The test tree imports modules by basename (no packages, rootdir conftest): two test files
with one basename make the whole suite fail to collect, so the tree keeps them unique."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_module_basename_is_unique() -> None:
    names = Counter(
        p.name for p in TESTS.rglob("*.py") if p.name not in ("conftest.py", "__init__.py")
    )
    assert [n for n, k in names.items() if k > 1] == []
