"""Tenant isolation: the one place that scopes queries and checks workflow ownership."""

from __future__ import annotations

import uuid
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped

from core.errors import NotFound
from core.security import Principal


class TenantOwned(Protocol):
    """A table whose rows carry the owning tenant."""

    id: Mapped[Any]
    tenant_id: Mapped[Any]


Row = TypeVar("Row", bound=TenantOwned)
Query = TypeVar("Query", bound=Select[Any])


def scoped(statement: Query, model: type[TenantOwned], principal: Principal) -> Query:
    """Limit a query to the caller's tenant; ``super_admin`` crosses tenants."""
    if principal.is_super_admin:
        return statement
    return statement.where(model.tenant_id == principal.tenant_id)


async def owned(
    session: AsyncSession, model: type[Row], row_id: uuid.UUID | str, principal: Principal
) -> Row:
    """The row, if the caller's tenant owns it; 404 otherwise (no hint that it exists).

    Call it before any signal, update or query of the row's workflow: the workflow id is
    then derived from a row the caller may see, never from a client-supplied id alone.
    """
    query = scoped(select(model).where(model.id == row_id), model, principal)
    row: Row | None = await session.scalar(query)
    if row is None:
        raise NotFound(f"No {model.__name__.lower()} {row_id} in your tenant.")
    return row
