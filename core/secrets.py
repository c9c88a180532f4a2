"""The local secret store: files under ``<data_dir>/secrets`` (mode 0600), made on first use.

It serves the embedded default only; production sets the secrets through ``BIZ_`` settings.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


class LocalSecretStore:
    """Named secrets kept as files in one private folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get_or_create(self, name: str, generate: Callable[[], str]) -> str:
        """The secret called ``name``, generated and written once if missing."""
        path = self.folder / name
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Written whole under a name of its own, then linked into place: a process starting
        # at the same moment finds either no file or the complete one, never an empty one.
        fd, draft = tempfile.mkstemp(prefix=f".{name}.", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(generate() + "\n")
            with contextlib.suppress(FileExistsError):  # another process made it first
                os.link(draft, path)
        finally:
            os.unlink(draft)
        return path.read_text().strip()
