"""Billing's say over writes: a suspended or cancelled tenant is read-only.

Add :data:`WritableTenant` to a writing route's signature, or :data:`read_only_guard` to a
router's ``dependencies`` (it lets safe methods through and checks the others). Billing's own
routes stay open, so that a suspended tenant can still pay and change its subscription.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select

from activities.billing import OPERATOR_HOLD_ACTIONS, OPERATOR_SUSPENDED
from api.deps import CurrentPrincipal, SessionDep
from core.errors import Problem
from core.security import Principal
from models.audit import AuditEntry
from models.tenant import Tenant, TenantStatus

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class TenantSuspended(Problem):
    status, slug, title = 403, "tenant-suspended", "Tenant suspended"


class TenantCancelled(Problem):
    status, slug, title = 403, "tenant-cancelled", "Tenant subscription cancelled"


async def writable_tenant(principal: CurrentPrincipal, session: SessionDep) -> Principal:
    """The caller, if its tenant may write; a problem naming the reason otherwise."""
    if principal.is_super_admin:
        return principal
    status = await session.scalar(select(Tenant.status).where(Tenant.id == principal.tenant_id))
    if status is TenantStatus.SUSPENDED:
        if await _held_by_operator(session, principal.tenant_id):
            raise TenantSuspended(
                "Your tenant is read-only: the platform's operators suspended it. Contact "
                "support to have it lifted.",
                cause="operator",
            )
        raise TenantSuspended(
            "Your tenant is read-only because an invoice is overdue; pay it under "
            "Settings → Billing and writing is possible again at once.",
            cause="payment",
            billing_url="/api/v1/billing/invoices",
        )
    if status is TenantStatus.CANCELLED:
        raise TenantCancelled(
            "Your tenant's subscription has ended and it is read-only; subscribe again to "
            "make changes.",
            billing_url="/api/v1/billing/subscription",
        )
    return principal


async def _held_by_operator(session: SessionDep, tenant_id: uuid.UUID | None) -> bool:
    """Whether the tenant's last operator action was a suspension (a suspended tenant only:
    the billing workflow writes the hold to the audit trail)."""
    last = await session.scalar(
        select(AuditEntry.action)
        .where(AuditEntry.tenant_id == tenant_id, AuditEntry.action.in_(OPERATOR_HOLD_ACTIONS))
        .order_by(AuditEntry.id.desc())
        .limit(1)
    )
    return last == OPERATOR_SUSPENDED


WritableTenant = Annotated[Principal, Depends(writable_tenant)]


async def _guard_writes(request: Request, session: SessionDep, principal: CurrentPrincipal) -> None:
    if request.method not in _SAFE_METHODS:
        await writable_tenant(principal, session)


read_only_guard = Depends(_guard_writes)
