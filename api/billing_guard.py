"""Billing's say over writes: a suspended or cancelled tenant is read-only.

Add :data:`WritableTenant` to a writing route's signature, or :data:`read_only_guard` to a
router's ``dependencies`` (it lets safe methods through and checks the others). Billing's own
routes stay open, so that a suspended tenant can still pay and change its subscription.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select

from api.deps import CurrentPrincipal, SessionDep
from core.errors import Problem
from core.security import Principal
from models.tenant import Tenant, TenantStatus

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class TenantSuspended(Problem):
    status, slug, title = 403, "tenant-suspended", "Tenant suspended for non-payment"


class TenantCancelled(Problem):
    status, slug, title = 403, "tenant-cancelled", "Tenant subscription cancelled"


async def writable_tenant(principal: CurrentPrincipal, session: SessionDep) -> Principal:
    """The caller, if its tenant may write; a problem naming the reason otherwise."""
    if principal.is_super_admin:
        return principal
    status = await session.scalar(select(Tenant.status).where(Tenant.id == principal.tenant_id))
    if status is TenantStatus.SUSPENDED:
        raise TenantSuspended(
            "Your tenant is read-only because an invoice is overdue; pay it under "
            "Settings → Billing and writing is possible again at once.",
            billing_url="/api/v1/billing/invoices",
        )
    if status is TenantStatus.CANCELLED:
        raise TenantCancelled(
            "Your tenant's subscription has ended and it is read-only; subscribe again to "
            "make changes.",
            billing_url="/api/v1/billing/subscription",
        )
    return principal


WritableTenant = Annotated[Principal, Depends(writable_tenant)]


async def _guard_writes(request: Request, session: SessionDep, principal: CurrentPrincipal) -> None:
    if request.method not in _SAFE_METHODS:
        await writable_tenant(principal, session)


read_only_guard = Depends(_guard_writes)
