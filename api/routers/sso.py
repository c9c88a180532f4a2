"""Single sign-on routes: redirect to the provider; on its callback sign in, link or sign up."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from api.deps import SessionDep, SettingsDep, TemporalDep
from api.ratelimit import RateLimits
from api.registration import register_tenant
from api.routers.auth import RateLimitsDep, Tokens, request_actor
from connectors import sso
from core import audit
from core.errors import Conflict, Forbidden
from core.identity import membership_of, normalize_email, open_session
from core.settings import Settings
from models.identity import SsoIdentity
from models.user import Membership, User

router = APIRouter(prefix="/api/v1/auth/sso", tags=["identity"])
# Bounded like any name; unknown or unconfigured providers are a 404 from the connector.
Provider = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[a-z0-9-]+$")]


@router.get(
    "/{provider}/login",
    response_class=RedirectResponse,
    status_code=status.HTTP_303_SEE_OTHER,
    summary="Start single sign-on with google, github, microsoft or oidc",
)
async def sso_login(
    provider: Provider, request: Request, settings: SettingsDep, limits: RateLimitsDep
) -> Response:
    """Redirect to the provider's sign-in page; the state travels in an HTTP-only cookie.

    404 when the provider is unknown or not configured; 429 when rate limited.
    """
    await limits.sso(request_actor(request).ip or "unknown")
    return await sso.login_redirect(provider, settings)


@router.get("/{provider}/callback", summary="Finish single sign-on and receive tokens")
async def sso_callback(
    provider: Provider,
    request: Request,
    response: Response,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
    limits: RateLimitsDep,
) -> Tokens:
    """Sign in the account linked to this provider identity.

    Without a link, the provider's verified e-mail address links the existing user who has it
    (unless that user has two-factor authentication on), or signs up a new user and tenant
    (onboarding then collects the company's details).
    400 for an incomplete callback, 401 when the provider rejects the sign-in (bad or replayed
    code, state mismatch), 403 for an unverified address or a deactivated account, 429 when
    rate limited (a new account also counts as a sign-up).
    """
    actor = request_actor(request)
    await limits.sso(actor.ip or "unknown")
    account = await sso.account_from_callback(provider, settings, request)
    membership = await _member_for(session, client, settings, account, actor, limits)
    who = audit.Actor(membership.user_id, actor.ip, actor.user_agent)
    # No second factor was checked here: the session cannot decide approvals until it steps up.
    tokens = await open_session(session, membership, settings, who, method="sso")
    await audit.append(
        session,
        "user.login",
        tenant_id=membership.tenant_id,
        actor=who,
        data={"method": "sso", "provider": provider},
    )
    await session.commit()
    response.delete_cookie(sso.STATE_COOKIE)
    return Tokens.of(tokens)


async def _member_for(
    session: AsyncSession,
    client: Client,
    settings: Settings,
    account: sso.SsoAccount,
    actor: audit.Actor,
    limits: RateLimits,
) -> Membership:
    """The membership to sign in: by the identity's link, else by e-mail, else a new tenant."""
    identity = await session.scalar(
        select(SsoIdentity).where(
            SsoIdentity.provider == account.provider, SsoIdentity.subject == account.subject
        )
    )
    if identity is not None:
        return await _active_membership(session, identity.user_id)
    if not account.email_verified:
        raise sso.SsoEmailUnverified(
            f"{account.provider} has not verified {account.email}; verify it there, or sign in "
            "with your password."
        )
    user = await session.scalar(select(User).where(User.email == normalize_email(account.email)))
    if user is not None:
        membership = await _active_membership(session, user.id)
        if user.mfa_enabled:
            # Control of the address at a provider must not stand in for the second factor.
            raise Forbidden(
                "This account uses two-factor authentication, so single sign-on is not linked "
                "to it automatically; sign in with your password and code."
            )
    else:
        await limits.registration(actor.ip or "unknown")
        membership = await _sign_up(session, client, settings, account, actor)
    await _link(session, membership, account, actor)
    return membership


async def _active_membership(session: AsyncSession, user_id: uuid.UUID) -> Membership:
    user = await session.get(User, user_id)
    membership = await membership_of(session, user.id) if user is not None else None
    if user is None or not user.is_active or membership is None:
        raise Forbidden("This account is deactivated.")
    return membership


async def _sign_up(
    session: AsyncSession,
    client: Client,
    settings: Settings,
    account: sso.SsoAccount,
    actor: audit.Actor,
) -> Membership:
    """A new tenant for a new person; the company name waits for the onboarding wizard."""
    registration = await register_tenant(
        session,
        client,
        settings,
        email=account.email,
        full_name=account.full_name,
        company_name=f"{account.full_name}'s company"[:200],
        password_hash=None,
        actor=actor,
        method="sso",
    )
    return registration.membership


async def _link(
    session: AsyncSession, membership: Membership, account: sso.SsoAccount, actor: audit.Actor
) -> None:
    session.add(
        SsoIdentity(user_id=membership.user_id, provider=account.provider, subject=account.subject)
    )
    try:
        await session.flush()
    except IntegrityError:
        # A concurrent callback for the same provider account linked it first.
        await session.rollback()
        raise Conflict("This sign-in is already being completed; sign in again.") from None
    await audit.append(
        session,
        "user.sso_linked",
        tenant_id=membership.tenant_id,
        actor=audit.Actor(membership.user_id, actor.ip, actor.user_agent),
        data={"provider": account.provider},
    )
