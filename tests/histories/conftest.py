"""Fixtures of the recorder: the published test key, one database (SQLite) for all scenarios.

Recording runs on its own (``make histories``), so these session fixtures are the only ones
of their name in that pytest session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core import migrate
from tests.histories import TEST_CODEC_KEYS


@pytest.fixture(scope="session")
def codec_spec() -> str:
    """Histories are encrypted with the committed test key, so the replay test can read them."""
    return TEST_CODEC_KEYS


@pytest.fixture(scope="session")
async def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One backend is enough: the database is behind the activities, not in the history."""
    url = f"sqlite+aiosqlite:///{Path(tmp_path_factory.mktemp('db')) / 'histories.db'}"
    await migrate.upgrade(url)
    return url
