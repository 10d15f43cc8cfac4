"""Test tiers as pytest markers (registered in pyproject.toml), and the rule that keeps the
torch tier honest: in CI (env CI set) a torch test that skips is a failure, because CI installs
torch and a skip there means the tier silently did not run. A skip that says `gpu` is allowed:
CI machines need not have CUDA.

tests/conftest.py imports these hooks; pytest finds them by name there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

# Fixtures that build or run tiny real models: a test using one is in the torch tier even
# without an explicit mark (tiny_* fixtures are matched by prefix).
TORCH_FIXTURES = frozenset({"qwen3_worker", "model_copies", "sdk_stack", "worker_rss_mb"})
# A module skipped at import because torch's stack is missing (pytest.importorskip's text).
_TORCH_IMPORT_SKIP = re.compile(r"could not import '(torch|transformers)'")


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def cuda_missing() -> str | None:
    """Why CUDA tests can't run here, or None when they can."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "CUDA is not available on this machine"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    for item in items:
        names = getattr(item, "fixturenames", ())
        if any(n.startswith("tiny_") or n in TORCH_FIXTURES for n in names):
            item.add_marker(pytest.mark.torch)
    why = cuda_missing() if gpu else None
    if why is not None:
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason=f"gpu: {why}"))


def _reason(longrepr: Any) -> str:
    """The text of a skip report (a (path, line, reason) tuple, or anything printable)."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    outcome = yield
    report = outcome.get_result()
    if not (in_ci() and report.skipped and item.get_closest_marker("torch")):
        return
    if hasattr(report, "wasxfail"):
        return
    reason = _reason(report.longrepr)
    if "gpu" not in reason.lower():
        report.outcome = "failed"
        report.longrepr = f"the torch tier must not skip in CI (CI is set): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[Any]:
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and _TORCH_IMPORT_SKIP.search(_reason(report.longrepr)):
        report.outcome = "failed"
        report.longrepr = (
            f"the torch tier must not skip in CI (CI is set): {_reason(report.longrepr)}"
        )
