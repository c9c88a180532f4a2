"""Onboarding activities: the submission checks, tenant status changes, and provisioning."""

from __future__ import annotations

import logging
import re
import unicodedata

from sqlalchemy import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from connectors.mail import Mailer
from core import audit
from core.db import SessionFactory, transaction
from core.identity import PLATFORM_SLUG
from core.settings import Settings
from models.email import EmailMessage
from models.onboarding import (
    DuplicateQuery,
    SimilarTenant,
    TenantTransition,
    WelcomeEmail,
)
from models.tenant import Tenant
from models.user import Membership, Role, User

log = logging.getLogger(__name__)

# Words that do not tell two companies apart ("Acme Ltd" is "ACME Limited").
_LEGAL_FORMS = frozenset(
    {
        *("ab", "ag", "as", "bv", "co", "company", "corp", "corporation", "gmbh", "inc"),
        *("incorporated", "kg", "limited", "llc", "llp", "ltd", "nv", "oy", "plc", "pte"),
        *("pty", "pvt", "sa", "sarl", "sas", "spa", "srl", "the"),
    }
)
# How many name matches the database pre-selects before the exact comparison.
_CANDIDATE_LIMIT = 200


def company_key(name: str) -> str:
    """A company name reduced to what identifies it: case, accents, punctuation and legal
    forms removed."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", ascii_name.lower().replace("&", " and "))
    return " ".join(word for word in words if word not in _LEGAL_FORMS)


class OnboardingActivities:
    """Activities bound to the application database and the mail port."""

    def __init__(self, sessions: SessionFactory, mailer: Mailer, settings: Settings) -> None:
        self._sessions = sessions
        self._mailer = mailer
        self._settings = settings

    @activity.defn
    async def find_similar_tenants(self, query: DuplicateQuery) -> list[SimilarTenant]:
        """Other tenants whose name is the applicant's legal name (possible duplicates)."""
        key = company_key(query.legal_name)
        if not key:
            return []
        probe = max(key.split(), key=len)
        async with self._sessions() as session:
            candidates = await session.execute(
                select(Tenant.id, Tenant.name, Tenant.status)
                .where(
                    Tenant.id != query.tenant_id,
                    Tenant.slug != PLATFORM_SLUG,
                    Tenant.name.icontains(probe, autoescape=True),
                )
                .order_by(Tenant.created_at)
                .limit(_CANDIDATE_LIMIT)
            )
        return [
            SimilarTenant(tenant_id=tenant_id, name=name, status=status)
            for tenant_id, name, status in candidates
            if company_key(name) == key
        ]

    @activity.defn
    async def transition_tenant(self, change: TenantTransition) -> None:
        """Set the tenant's status (and plan) and append the audit row, in one transaction;
        a retry finds the row under its key and changes nothing more."""
        async with transaction(self._sessions) as session:
            tenant = await session.get(Tenant, change.tenant_id, with_for_update=True)
            if tenant is None:
                raise ApplicationError(f"tenant {change.tenant_id} is gone", non_retryable=True)
            tenant.status = change.status
            if change.plan is not None:
                tenant.plan = change.plan.value
            await audit.append(
                session,
                change.action,
                tenant_id=change.tenant_id,
                actor=audit.Actor(user_id=change.actor_id),
                data={"status": change.status.value, **change.data},
                idempotency_key=change.idempotency_key,
            )

    @activity.defn
    async def send_welcome_email(self, welcome: WelcomeEmail) -> int:
        """Welcome each admin of the newly active tenant, once per admin under the workflow's
        key. Returns how many admins there are."""
        async with self._sessions() as session:
            tenant = await session.get(Tenant, welcome.tenant_id)
            if tenant is None:
                raise ApplicationError(f"tenant {welcome.tenant_id} is gone", non_retryable=True)
            admins = (
                await session.execute(
                    select(User.id, User.email, User.full_name)
                    .join(Membership, Membership.user_id == User.id)
                    .where(
                        Membership.tenant_id == welcome.tenant_id,
                        Membership.role == Role.TENANT_ADMIN,
                        User.is_active,
                    )
                    .order_by(User.email)
                )
            ).all()
        link = self._settings.public_app_url.rstrip("/")
        for user_id, address, full_name in admins:
            await self._mailer.send(
                EmailMessage(
                    idempotency_key=f"{welcome.idempotency_key}:{user_id}",
                    to=address,
                    subject=f"Welcome to BizOSaaS: {tenant.name} is active",
                    body=(
                        f"Hello {full_name},\n\n{tenant.name} has been approved and is now "
                        f"active. Sign in at {link} to get started.\n"
                    ),
                    tenant_id=welcome.tenant_id,
                )
            )
        return len(admins)
