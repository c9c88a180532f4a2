"""Settings: database URLs are validated and given their async driver."""

from __future__ import annotations

import pytest

from core.settings import normalize_database_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgres://u:p@h:5433/db", "postgresql+asyncpg://u:p@h:5433/db"),
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_supported_urls_get_the_async_driver(given: str, expected: str) -> None:
    assert normalize_database_url(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [("::::", "not a database URL"), ("mysql://u@h/db", "unsupported driver")],
)
def test_bad_urls_name_the_setting(given: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        normalize_database_url(given)
    assert "BIZ_DATABASE_URL" in str(caught.value)
