"""The local secret store made by processes starting together (an API and workers on one data
folder): every one reads the same complete secret, never an empty file."""

from __future__ import annotations

import secrets
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from core.secrets import LocalSecretStore


def _slow_key() -> str:
    time.sleep(0.05)  # widens the window in which another process looks
    return secrets.token_hex(16)


def _read(folder: str) -> str:
    return LocalSecretStore(Path(folder)).get_or_create("data-keys", _slow_key)


def test_processes_starting_together_share_one_complete_secret(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=6) as pool:
        found = list(pool.map(_read, [str(tmp_path / "secrets")] * 12))
    assert len(set(found)) == 1
    assert len(found[0]) == 32
    assert (tmp_path / "secrets" / "data-keys").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in (tmp_path / "secrets").iterdir()] == ["data-keys"]
