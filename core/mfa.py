"""TOTP (RFC 6238) with a replay guard, and single-use recovery codes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

import pyotp

from models.base import utcnow

ISSUER = "BizOSaaS"
RECOVERY_CODE_COUNT = 10
_WINDOW = (0, -1, 1)  # the current step first, then one either side for clock drift


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER)


def accepted_step(
    secret: str, code: str, last_step: int | None, now: datetime | None = None
) -> int | None:
    """The time step ``code`` belongs to, if valid and newer than ``last_step``.

    pyotp has no replay guard: the caller stores the returned step and passes it back, so a code
    (or an older one) that was already accepted is refused.
    """
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now or utcnow())
    for offset in _WINDOW:
        step = current + offset
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step if last_step is None or step > last_step else None
    return None


def new_recovery_codes() -> list[str]:
    """Ten codes like ``k3j9-x2m4-q8vd``: 60 random bits each."""
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    return [
        "-".join("".join(secrets.choice(alphabet) for _ in range(4)) for _ in range(3))
        for _ in range(RECOVERY_CODE_COUNT)
    ]


def recovery_digest(code: str) -> str:
    # High-entropy random codes: a fast hash is enough (no dictionary to try).
    return hashlib.sha256(code.strip().lower().encode()).hexdigest()
