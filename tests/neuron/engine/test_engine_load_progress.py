"""LoadMeter: progress frames while weights are read, so the daemon's load deadline sees a slow
load move and a stuck one stop."""

from __future__ import annotations

import threading

from helexa.neuron.engine.frames import Progress
from helexa.neuron.engine.load_progress import LoadMeter


class Frames:
    def __init__(self, want: int) -> None:
        self.got: list[Progress] = []
        self.want = want
        self.enough = threading.Event()

    def __call__(self, frame: Progress) -> None:
        self.got.append(frame)
        if len(self.got) >= self.want:
            self.enough.set()


def test_reports_growth_since_the_start_capped_at_total() -> None:
    samples = iter([1000, 1400, 1900, 99999])
    frames = Frames(3)
    with LoadMeter(frames, lambda: next(samples, 99999), total=5000, interval=0.01):
        assert frames.enough.wait(10)
    done = [f.done_bytes for f in frames.got[:3]]
    assert done == [400, 900, 5000]
    assert all(f.phase == "load" and f.total_bytes == 5000 for f in frames.got)


def test_a_stuck_load_reports_no_movement() -> None:
    frames = Frames(3)
    with LoadMeter(frames, lambda: 7, total=None, interval=0.01):
        assert frames.enough.wait(10)
    assert {(f.done_bytes, f.total_bytes) for f in frames.got} == {(0, None)}


def test_a_failing_probe_or_a_gone_daemon_never_fails_the_load() -> None:
    calls = threading.Event()

    def broken() -> int:
        calls.set()
        raise RuntimeError("no probe")

    def gone(_: Progress) -> None:
        raise BrokenPipeError

    with LoadMeter(gone, broken, total=10, interval=0.01):
        assert calls.wait(10)
    with LoadMeter(gone, lambda: 1, total=10, interval=0.01):
        pass
