"""Access tokens (JWT, HS256) and the principal they carry."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from models.user import Role

ALGORITHM = "HS256"
_REQUIRED_CLAIMS = ["sub", "tenant_id", "role", "sid", "exp", "iat", "jti"]


class InvalidToken(ValueError):
    """The token is malformed, forged, expired or of the wrong kind."""


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: who, in which tenant, with which role, in which session."""

    user_id: uuid.UUID
    tenant_id: uuid.UUID
    role: Role
    session_id: uuid.UUID
    # How the session authenticated (RFC 8176 values, e.g. ["pwd", "otp", "mfa"]) and when.
    # Informative for clients: decisions that need MFA read the session row, which a step-up
    # or a revocation changes at once.
    amr: tuple[str, ...] = ()
    auth_time: datetime | None = None

    @property
    def is_super_admin(self) -> bool:
        return self.role is Role.SUPER_ADMIN


def issue_access_token(principal: Principal, key: str, ttl: timedelta) -> str:
    """A signed access token for ``principal`` that expires after ``ttl``."""
    now = datetime.now(UTC)
    claims: dict[str, object] = {
        "sub": str(principal.user_id),
        "tenant_id": str(principal.tenant_id),
        "role": principal.role.value,
        "sid": str(principal.session_id),
        "iat": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
        "amr": list(principal.amr),
    }
    if principal.auth_time is not None:
        claims["auth_time"] = int(principal.auth_time.timestamp())
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def read_access_token(token: str, key: str) -> Principal:
    """Verify signature, algorithm and expiry, and return the principal.

    A token verified before is not verified again (a frontend sends the same one with each
    request until it refreshes): its principal is kept with its expiry, which is checked on
    every use. Whether its session still stands is the caller's check, every time.
    """
    known = _verified.get((token, key))
    if known is not None:
        principal, expires = known
        if time.time() >= expires:
            raise InvalidToken("the access token has expired")
        _verified.move_to_end((token, key))
        return principal
    principal, expires = _verify(token, key)
    _verified[(token, key)] = (principal, expires)
    if len(_verified) > _VERIFIED_TOKENS:
        _verified.popitem(last=False)
    return principal


# Tokens verified lately, with their principal and expiry (least recently used first).
_VERIFIED_TOKENS = 4096
_verified: OrderedDict[tuple[str, str], tuple[Principal, float]] = OrderedDict()


def _verify(token: str, key: str) -> tuple[Principal, float]:
    try:
        claims = jwt.decode(
            token, key, algorithms=[ALGORITHM], options={"require": _REQUIRED_CLAIMS}
        )
        principal = Principal(
            user_id=uuid.UUID(claims["sub"]),
            tenant_id=uuid.UUID(claims["tenant_id"]),
            role=Role(claims["role"]),
            session_id=uuid.UUID(claims["sid"]),
            amr=tuple(str(method) for method in claims.get("amr", [])),
            auth_time=(
                datetime.fromtimestamp(int(claims["auth_time"]), UTC)
                if "auth_time" in claims
                else None
            ),
        )
        return principal, float(claims["exp"])
    except jwt.ExpiredSignatureError:
        raise InvalidToken("the access token has expired") from None
    except (jwt.InvalidTokenError, ValueError, TypeError):
        raise InvalidToken("the access token is invalid") from None
