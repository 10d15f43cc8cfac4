"""A child process's exit status in words (neuron workers, `helexa up`'s children).

A signal is named; SIGILL gets its usual cause, since a llama.cpp built for CPU features the
machine lacks (AMX on some VMs, or -march=native elsewhere) dies that way on quantized files.
"""

from __future__ import annotations

import signal

_SIGILL_HINT = (
    " (illegal instruction: the engine was built for CPU features this machine lacks; "
    "rebuild llama-cpp-python with -DGGML_NATIVE=OFF and AMX off, see the README)"
)


def exit_text(rc: int | None) -> str:
    """'exited with code N' or 'was killed by SIGNAME', with the SIGILL hint."""
    if rc is None or rc >= 0:
        return f"exited with code {rc}"
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        return f"was killed by signal {-rc}"
    return f"was killed by {name}" + (_SIGILL_HINT if -rc == signal.SIGILL else "")
