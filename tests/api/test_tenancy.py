"""The one tenant-scoping function and the ownership check before workflow access."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from api.tenancy import owned, scoped
from core.db import SessionFactory
from core.errors import NotFound
from core.security import Principal
from core.settings import Settings
from models.audit import AuditEntry
from models.user import Membership, Role
from tests.factories import Member, member


def _principal(who: Member, role: Role | None = None) -> Principal:
    return Principal(who.user_id, who.tenant_id, role or who.role, uuid.uuid4())


async def _membership_id(sessions: SessionFactory, who: Member) -> uuid.UUID:
    async with sessions() as session:
        found = await session.scalar(select(Membership.id).where(Membership.user_id == who.user_id))
    assert found is not None
    return found


async def test_owned_admits_the_tenant_and_super_admin_only(
    sessions: SessionFactory, settings: Settings
) -> None:
    mine = await member(sessions, settings)
    theirs = await member(sessions, settings)
    row_id = await _membership_id(sessions, theirs)
    async with sessions() as session:
        assert (await owned(session, Membership, row_id, _principal(theirs))).id == row_id
        with pytest.raises(NotFound):
            await owned(session, Membership, row_id, _principal(mine))
        staff = _principal(mine, Role.SUPER_ADMIN)
        assert (await owned(session, Membership, row_id, staff)).id == row_id


async def test_scoped_filters_lists(sessions: SessionFactory, settings: Settings) -> None:
    mine = await member(sessions, settings)
    await member(sessions, settings)
    async with sessions() as session:
        rows = (
            await session.scalars(scoped(select(Membership), Membership, _principal(mine)))
        ).all()
    assert {row.tenant_id for row in rows} == {mine.tenant_id}


def test_a_table_without_tenant_is_refused() -> None:
    principal = Principal(uuid.uuid4(), uuid.uuid4(), Role.USER, uuid.uuid4())
    with pytest.raises(TypeError, match="not tenant-owned"):
        scoped(select(AuditEntry.id), type("Plain", (), {}), principal)
