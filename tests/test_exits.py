"""A worker's exit status in words (what `recovering`/failed messages and logs say)."""

from __future__ import annotations

import signal

from helexa.exits import exit_text


def test_exit_text() -> None:
    assert exit_text(1) == "exited with code 1"
    assert exit_text(-signal.SIGKILL) == "was killed by SIGKILL"
    sigill = exit_text(-signal.SIGILL)
    assert sigill.startswith("was killed by SIGILL (illegal instruction")
    assert "GGML_NATIVE=OFF" in sigill
    assert exit_text(-200) == "was killed by signal 200"
