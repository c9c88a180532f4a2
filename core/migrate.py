"""Run Alembic migrations programmatically (``bizosaas migrate`` and the test fixtures)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations

MIGRATIONS_DIR = Path(migrations.__file__).parent


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_sync(database_url: str, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (blocking; env.py runs its own event loop)."""
    command.upgrade(alembic_config(database_url), revision)


async def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade from async code, on a worker thread so env.py can run its own loop."""
    await asyncio.to_thread(upgrade_sync, database_url, revision)
