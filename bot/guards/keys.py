"""Where the API key comes from: the environment, or a file that may be rotated while we run."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import SecretStr

from bot.guards.redaction import remember

log = logging.getLogger(__name__)


class KeySource:
    """Hands out the current API key.

    With a file (Docker/Kubernetes secrets), the file is re-read whenever its modification time or size
    changes, so a rotated key takes effect on the next request without a restart. The key itself is never
    logged; only the fact that it changed is.
    """

    def __init__(self, value: SecretStr | None = None, file: Path | None = None) -> None:
        self._value = value.get_secret_value() if value is not None else None
        self._file = file
        self._stamp: tuple[float, int] | None = None
        self._from_file: str | None = None
        if file is not None:
            # Read now, not at the first request: the key is then masked in every log line from the start.
            self.reload()

    def get(self) -> str | None:
        if self._file is None:
            return self._value
        try:
            st = os.stat(self._file)
        except OSError:
            log.warning("API key file %s cannot be read; keeping the last key", self._file)
            return self._from_file or self._value
        stamp = (st.st_mtime, st.st_size)
        if stamp != self._stamp:
            self.reload()
        return self._from_file or self._value

    def reload(self) -> bool:
        """Re-read the file now (after a 401, say); True when the key changed."""
        if self._file is None:
            return False
        try:
            st = os.stat(self._file)
            key = self._file.read_text(encoding="utf-8").strip() or None
        except OSError:
            return False
        changed = key != self._from_file
        remember(key)
        if changed and self._stamp is not None:
            log.info("API key file %s changed; using the new key", self._file)
        self._from_file, self._stamp = key, (st.st_mtime, st.st_size)
        return changed
