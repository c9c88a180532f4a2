"""Tenant isolation: the one place that scopes queries and checks workflow ownership."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from core.errors import NotFound
from core.security import Principal
from models.base import Base

Row = TypeVar("Row", bound=Base)
Query = TypeVar("Query", bound=Select[Any])


def _column(model: type[Base], name: str) -> InstrumentedAttribute[Any]:
    column = getattr(model, name, None)
    if not isinstance(column, InstrumentedAttribute):
        raise TypeError(f"{model.__name__} has no {name} column: it is not tenant-owned")
    return column


def scoped(statement: Query, model: type[Base], principal: Principal) -> Query:
    """Limit a query to the caller's tenant (``model.tenant_id``); ``super_admin`` crosses."""
    if principal.is_super_admin:
        return statement
    return statement.where(_column(model, "tenant_id") == principal.tenant_id)


async def owned(
    session: AsyncSession, model: type[Row], row_id: uuid.UUID, principal: Principal
) -> Row:
    """The row, if the caller's tenant owns it; 404 otherwise (no hint that it exists).

    Call it before any signal, update or query of the row's workflow: the workflow id is
    then derived from a row the caller may see, never from a client-supplied id alone.
    """
    query = scoped(select(model).where(_column(model, "id") == row_id), model, principal)
    row: Row | None = await session.scalar(query)
    if row is None:
        raise NotFound(f"No {model.__tablename__} row {row_id} in your tenant.")
    return row
