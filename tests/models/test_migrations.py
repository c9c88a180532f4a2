"""Migrations run up, down and up again on both backends."""

from __future__ import annotations

import asyncio

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from core import migrate
from core.db import create_engine
from models import Base


async def _tables(url: str) -> set[str]:
    engine: AsyncEngine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def test_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    await migrate.upgrade(empty_database_url)
    assert set(Base.metadata.tables) <= await _tables(empty_database_url)

    config = migrate.alembic_config(empty_database_url)
    await asyncio.to_thread(command.downgrade, config, "base")
    assert await _tables(empty_database_url) <= {"alembic_version"}

    await migrate.upgrade(empty_database_url)
    assert set(Base.metadata.tables) <= await _tables(empty_database_url)


async def test_models_match_the_migrations(engine: AsyncEngine) -> None:
    """Autogenerate finds nothing to add: every model change has its migration."""

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as connection:
        assert await connection.run_sync(diff) == []
