"""Catalogue hot reload: models.toml is re-read on SIGHUP and when it changes.

A bad edit must not take a serving gateway down, so an unreadable or invalid file keeps the
catalogue in use and says why in the log.
"""

from __future__ import annotations

import logging
from pathlib import Path

from helexa.config.catalogue import Catalogue, load_catalogue
from helexa.config.loader import ConfigError
from helexa.cortex.models_view import warn_dangling_aliases

log = logging.getLogger("helexa.cortex.reload")
Stamp = tuple[int, int, int]


class CatalogueReloader:
    def __init__(self, catalogue: Catalogue, path: Path) -> None:
        self.catalogue = catalogue
        self.path = path
        self._stamp = self._stat()

    def _stat(self) -> Stamp | None:
        """mtime, size and inode: editors that replace the file change the inode."""
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def check(self) -> bool:
        """Reload when the file changed since it was last read (every poll round)."""
        if self._stat() == self._stamp:
            return False
        return self.reload("the file changed")

    def reload(self, why: str) -> bool:
        """Re-read the file now; True when the new catalogue is in use."""
        self._stamp = self._stat()  # before reading: a write racing the read triggers another
        try:
            if self._stamp is None:
                raise ConfigError(f"{self.path}: file not found")
            new = load_catalogue(self.path)
        except (ConfigError, OSError, UnicodeDecodeError) as e:
            log.error("models catalogue not reloaded (%s), keeping the previous one: %s", why, e)
            return False
        self.catalogue.adopt(new)
        log.info(
            "models catalogue reloaded from %s (%s): %d models, %d aliases, %d fallback chains",
            self.path,
            why,
            len(new.models),
            len(new.aliases),
            len(new.fallbacks),
        )
        warn_dangling_aliases(self.catalogue)
        return True
