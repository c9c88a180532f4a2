"""Identity routes: register, login, refresh, logout, me, TOTP enrolment."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from api.deps import CurrentPrincipal, SessionDep, SettingsDep, TemporalDep
from api.ratelimit import RateLimits
from api.registration import register_tenant
from core import audit, password_policy, signin
from core.errors import Problem
from core.identity import TokenPair, membership_of
from core.passwords import hash_password
from models.user import User

router = APIRouter(prefix="/api/v1/auth", tags=["identity"])


class Body(BaseModel):
    # No whitespace stripping: a password is taken exactly as typed (its spaces count, and its
    # length limit is the typed length). Fields that should be trimmed say so themselves.
    model_config = ConfigDict(extra="forbid")


# A person's or company's name: trimmed, one line, no control characters (NUL included: the
# database refuses it, and so does a printed invoice).
Name = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$"
    ),
]
Password = Annotated[str, Field(max_length=password_policy.MAX_LENGTH)]


class RegisterBody(Body):
    email: EmailStr = Field(max_length=320)
    full_name: Name
    company_name: Name
    password: Password

    @field_validator("password")
    @classmethod
    def _strong(cls, value: str, info: ValidationInfo) -> str:
        names = (str(info.data.get("company_name", "")), str(info.data.get("full_name", "")))
        found = password_policy.problems(value, email=str(info.data.get("email", "")), names=names)
        if found:
            raise ValueError("password " + "; ".join(found))
        return value


class Registered(BaseModel):
    user_id: str
    tenant_id: str
    onboarding_workflow_id: str


class LoginBody(Body):
    email: EmailStr = Field(max_length=320)
    password: Password
    totp_code: str | None = Field(default=None, max_length=32)


class RefreshBody(Body):
    refresh_token: str = Field(min_length=1, max_length=200)


class Tokens(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int

    @classmethod
    def of(cls, pair: TokenPair) -> Tokens:
        return cls(
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            expires_in=pair.expires_in,
        )


class Me(BaseModel):
    user_id: str
    email: str
    full_name: str
    tenant_id: str
    role: str
    mfa_enabled: bool


class TotpSetup(BaseModel):
    secret: str
    otpauth_uri: str


class CodeBody(Body):
    code: str = Field(min_length=6, max_length=32)

    @field_validator("code")
    @classmethod
    def _trim(cls, value: str) -> str:
        # Codes are copied from apps and e-mails with stray spaces; they are not secrets-as-typed.
        return value.strip()


class RecoveryCodes(BaseModel):
    recovery_codes: list[str]


def request_actor(request: Request, principal: CurrentPrincipal | None = None) -> audit.Actor:
    """Who is calling, from where: for audit rows and session records."""
    return audit.Actor(
        user_id=principal.user_id if principal else None,
        ip=request.client.host if request.client else None,
        user_agent=(request.headers.get("user-agent") or "")[:400] or None,
    )


async def rate_limits(request: Request) -> RateLimits:
    limits: RateLimits = request.app.state.rate_limits
    return limits


RateLimitsDep = Annotated[RateLimits, Depends(rate_limits)]


def _tokens_or_raise(outcome: TokenPair | Problem) -> Tokens:
    if isinstance(outcome, Problem):
        raise outcome
    return Tokens.of(outcome)


@router.post("/register", status_code=status.HTTP_201_CREATED, summary="Sign up a new tenant")
async def register(
    body: RegisterBody,
    request: Request,
    session: SessionDep,
    client: TemporalDep,
    settings: SettingsDep,
    limits: RateLimitsDep,
) -> Registered:
    """Create the tenant (state ``onboarding``) and its ``tenant_admin``; start onboarding.

    409 on a taken e-mail; 429 past the per-client or the global sign-up rate.
    """
    await limits.registration(request_actor(request).ip or "unknown")
    registration = await register_tenant(
        session,
        client,
        settings,
        email=str(body.email),
        full_name=body.full_name,
        company_name=body.company_name,
        password_hash=await hash_password(body.password),
        actor=request_actor(request),
    )
    return Registered(
        user_id=str(registration.user_id),
        tenant_id=str(registration.tenant_id),
        onboarding_workflow_id=registration.onboarding_workflow_id,
    )


@router.post("/login", summary="Sign in with e-mail, password and, when enabled, a TOTP code")
async def login(
    body: LoginBody,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    limits: RateLimitsDep,
) -> Tokens:
    """401 bad credentials; 401 ``mfa-required``; 423 locked out; 429 rate limited."""
    actor = request_actor(request)
    await limits.login_attempt(actor.ip or "unknown", str(body.email).lower())
    outcome = await signin.login(
        session,
        settings,
        email=str(body.email),
        password=body.password,
        totp_code=body.totp_code,
        actor=actor,
    )
    await session.commit()  # failed attempts and lockouts are recorded too
    return _tokens_or_raise(outcome)


@router.post("/refresh", summary="Rotate a refresh token")
async def refresh(
    body: RefreshBody, request: Request, session: SessionDep, settings: SettingsDep
) -> Tokens:
    """A new pair; presenting a spent refresh token revokes the whole session."""
    outcome = await signin.refresh(session, settings, body.refresh_token, request_actor(request))
    await session.commit()
    return _tokens_or_raise(outcome)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, summary="End this session")
async def logout(principal: CurrentPrincipal, request: Request, session: SessionDep) -> Response:
    """Revoke the caller's session: its access and refresh tokens stop working at once."""
    await signin.logout(session, principal, request_actor(request, principal))
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", summary="The signed-in user")
async def me(principal: CurrentPrincipal, session: SessionDep) -> Me:
    """Who the access token belongs to, with tenant, role and MFA state."""
    user = await session.get(User, principal.user_id)
    membership = await membership_of(session, principal.user_id)
    assert user is not None
    assert membership is not None
    return Me(
        user_id=str(user.id),
        email=user.email,
        full_name=user.full_name,
        tenant_id=str(membership.tenant_id),
        role=membership.role.value,
        mfa_enabled=user.mfa_enabled,
    )


@router.post("/mfa/totp/setup", summary="Begin TOTP enrolment")
async def totp_setup(
    principal: CurrentPrincipal, session: SessionDep, settings: SettingsDep
) -> TotpSetup:
    """A new secret and its otpauth URI (for a QR code); not active until confirmed."""
    secret, uri = await signin.begin_totp(session, settings, principal)
    await session.commit()
    return TotpSetup(secret=secret, otpauth_uri=uri)


@router.post("/mfa/totp/confirm", summary="Enable TOTP with a first code")
async def totp_confirm(
    body: CodeBody,
    principal: CurrentPrincipal,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
) -> RecoveryCodes:
    """Enable TOTP; the ten recovery codes are shown once and stored hashed."""
    codes = await signin.confirm_totp(
        session, settings, principal, body.code, request_actor(request, principal)
    )
    await session.commit()
    return RecoveryCodes(recovery_codes=codes)


@router.post("/mfa/totp/disable", status_code=status.HTTP_204_NO_CONTENT, summary="Turn TOTP off")
async def totp_disable(
    body: CodeBody,
    principal: CurrentPrincipal,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    """Needs a current code or an unused recovery code."""
    await signin.disable_totp(
        session, settings, principal, body.code, request_actor(request, principal)
    )
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/mfa/step-up", summary="Confirm this session with a one-time code")
async def mfa_step_up(
    body: CodeBody,
    principal: CurrentPrincipal,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    limits: RateLimitsDep,
) -> Tokens:
    """Mark the caller's session as having passed two-factor authentication now.

    Answers a fresh token pair of the same session (its ``amr`` lists ``mfa``); actions that need
    MFA (deciding approvals) accept the session for ``BIZ_MFA_MAX_AGE``. 422 for a wrong or
    reused code (counted towards the lockout), 423 while locked out, 403 without TOTP enabled.
    """
    actor = request_actor(request, principal)
    await limits.login_attempt(actor.ip or "unknown", f"step-up:{principal.user_id}")
    outcome = await signin.step_up(session, settings, principal, body.code, actor)
    await session.commit()  # a failed code is counted even though the request fails
    return _tokens_or_raise(outcome)
