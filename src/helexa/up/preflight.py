"""Read the three files the way the children will, before starting them.

The children log config warnings (an unknown key, a typo'd table) to their log files, where a
user running `helexa up` in a terminal never sees them; reading the files here first puts those
warnings, and any config error, on the terminal.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from helexa.config.cortex import load_settings
from helexa.config.neuron import load_neuron_settings


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def config_warnings(directory: Path, environ: Mapping[str, str]) -> list[str]:
    """The warnings cortex and the neuron will log for these files under `environ`.

    Raises ConfigError when either would refuse to start."""
    log = logging.getLogger("helexa.config")
    collect = _Collect()
    level, propagate = log.level, log.propagate
    log.addHandler(collect)
    log.setLevel(logging.WARNING)
    log.propagate = False  # collected here, not also printed by logging's last-resort handler
    try:
        load_neuron_settings(directory / "neuron.toml", explicit=True, environ=environ)
        load_settings(directory / "cortex.toml", explicit=True, environ=environ)
    finally:
        log.removeHandler(collect)
        log.setLevel(level)
        log.propagate = propagate
    return list(dict.fromkeys(collect.lines))
