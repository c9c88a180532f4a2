"""Registration: a tenant and its first admin, then the tenant's onboarding workflow."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client
from temporalio.service import RPCError

from api.routers.onboarding import start_onboarding
from core import audit
from core.errors import Conflict, WorkflowTimeout
from core.identity import create_tenant_with_admin
from core.settings import Settings
from models.user import Membership
from workflows.onboarding import workflow_id as onboarding_workflow_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Registration:
    membership: Membership
    onboarding_workflow_id: str

    @property
    def user_id(self) -> uuid.UUID:
        return self.membership.user_id

    @property
    def tenant_id(self) -> uuid.UUID:
        return self.membership.tenant_id


async def register_tenant(
    session: AsyncSession,
    client: Client,
    settings: Settings,
    *,
    email: str,
    full_name: str,
    company_name: str,
    password_hash: str | None,
    actor: audit.Actor,
    method: str = "password",
) -> Registration:
    """Create tenant + ``tenant_admin`` in one transaction (committed here), then start onboarding.

    A taken e-mail is a 409 and nothing is written. When Temporal cannot be reached after the
    commit, the failure is logged and the wizard's first read starts the (idempotent) workflow.
    """
    try:
        membership = await create_tenant_with_admin(
            session,
            email=email,
            full_name=full_name,
            company_name=company_name,
            password_hash=password_hash,
        )
    except IntegrityError:
        await session.rollback()
        raise Conflict("An account with this e-mail already exists.") from None
    who = audit.Actor(membership.user_id, actor.ip, actor.user_agent)
    await audit.append(
        session, "user.registered", tenant_id=membership.tenant_id, actor=who,
        data={"method": method},
    )  # fmt: skip
    await session.commit()
    try:
        await start_onboarding(client, settings, membership.tenant_id)
    except (RPCError, RuntimeError, WorkflowTimeout):  # RuntimeError: could not connect
        # The account exists; GET /api/v1/onboarding starts the workflow when it is missing.
        log.exception("onboarding of tenant %s did not start", membership.tenant_id)
    return Registration(membership, onboarding_workflow_id(membership.tenant_id))
