"""Host memory probes shared by the daemon and its workers (Linux /proc; None elsewhere)."""

from __future__ import annotations

from pathlib import Path


def rss_mb(pid: int | None = None) -> int | None:
    """Resident memory of a process (this one by default) in MB, or None when it is gone."""
    try:
        with open(f"/proc/{pid if pid is not None else 'self'}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def mem_available_mb(path: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable in MB: what a new allocation can get without swapping."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
