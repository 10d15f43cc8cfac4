"""The tier hooks (rig/tiers.py) in a real pytest run: a skipped torch test fails in CI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from rig.cli_rig import clean_env

TESTS = Path(__file__).resolve().parents[1]
PYTEST = (
    sys.executable,
    "-m",
    "pytest",
    "-v",
    "-p",
    "no:cacheprovider",
    "--continue-on-collection-errors",
)

CONFTEST = """
from rig.tiers import pytest_collection_modifyitems, pytest_make_collect_report
from rig.tiers import pytest_runtest_makereport
"""
INI = """[pytest]
markers =
    torch: t
    gpu: g
    slow: s
"""
TESTS_PY = """
import pytest

@pytest.mark.torch
def test_torch_skips():
    pytest.skip("torch is missing")

@pytest.mark.torch
def test_torch_skips_for_gpu():
    pytest.skip("gpu: no CUDA here")

@pytest.mark.torch
def test_torch_passes():
    pass

def test_plain_skips():
    pytest.skip("not a torch test")

@pytest.fixture
def tiny_model():
    pytest.skip("could not build it")

def test_uses_a_tiny_fixture(tiny_model):
    pass

@pytest.mark.gpu
def test_gpu():
    import torch
    assert torch.cuda.is_available()
"""
SKIPPED_MODULE = """
import pytest
pytest.skip("could not import 'torch': No module named 'torch'", allow_module_level=True)
"""


def run(tmp_path: Path, ci: bool) -> tuple[dict[str, str], str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_tiers_demo.py").write_text(TESTS_PY)
    (tmp_path / "test_no_torch.py").write_text(SKIPPED_MODULE)
    env = clean_env(drop=("CI",), PYTHONPATH=str(TESTS))
    if ci:
        env["CI"] = "true"
    proc = subprocess.run(
        [*PYTEST, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    outcomes = dict(re.findall(r"::(\w+) (PASSED|FAILED|SKIPPED|ERROR)", out))
    return outcomes, out


def test_a_skipped_torch_test_fails_in_ci(tmp_path: Path) -> None:
    outcomes, out = run(tmp_path, ci=True)
    assert outcomes["test_torch_skips"] == "FAILED", out
    assert "the torch tier must not skip in CI" in out
    # in the torch tier by its fixture; a skip in setup fails as an error
    assert outcomes["test_uses_a_tiny_fixture"] == "ERROR", out
    assert outcomes["test_torch_skips_for_gpu"] == "SKIPPED", out
    assert outcomes["test_torch_passes"] == "PASSED", out
    assert outcomes["test_plain_skips"] == "SKIPPED", out
    # a module skipped at import for want of torch is a collection error
    assert "ERROR test_no_torch.py - the torch tier must not skip in CI" in out, out


def test_outside_ci_a_torch_test_may_skip(tmp_path: Path) -> None:
    outcomes, out = run(tmp_path, ci=False)
    assert outcomes["test_torch_skips"] == "SKIPPED", out
    assert outcomes["test_uses_a_tiny_fixture"] == "SKIPPED", out
    assert "ERROR" not in out, out


def test_gpu_tests_skip_with_a_reason_without_cuda(tmp_path: Path) -> None:
    from rig.tiers import cuda_missing

    why = cuda_missing()
    outcomes, out = run(tmp_path, ci=True)
    if why is None:
        assert outcomes["test_gpu"] == "PASSED", out
    else:
        assert outcomes["test_gpu"] == "SKIPPED", out
        assert f"gpu: {why}" in out
