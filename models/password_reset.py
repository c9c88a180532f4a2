"""Password reset: the types that cross the workflow boundary, and the reset token's format.

The token is ``<user id hex>.<base64url HMAC-SHA256(signing key, "password-reset:" + link id)>``
(``.i`` appended for an invitation), where the link id is the run id, then ``<run id>:<n>`` for
the n-th renewal: the same for every retry of one send (so a re-sent e-mail carries the same
link), different for every new request (so a new request kills the previous link). Only its
SHA-256 digest ever enters workflow history; the API reads the user id (and the mark) from it
to find the workflow.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from datetime import timedelta
from enum import StrEnum

from pydantic import BaseModel

TOKEN_PURPOSE = "password-reset:"  # noqa: S105 - the HMAC message prefix
# An invitation's token ends with this marker, so the API finds the invitation's own workflow;
# a reset token (and an invitation sent before invitations had their own workflow) has none.
INVITATION_MARK = ".i"
INVITATION_WORKFLOW_PREFIX = "invitation:"
_TOKEN_SHAPE = re.compile(r"^([0-9a-f]{32})\.([A-Za-z0-9_-]{43})(\.i)?$")


class ResetStatus(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    EXPIRED = "expired"
    UNDELIVERABLE = "undeliverable"  # the link could not be e-mailed


class LinkPurpose(StrEnum):
    """Why the password link is sent: a reset, or an invitation to set a first password."""

    RESET = "reset"
    INVITATION = "invitation"


class PasswordResetInput(BaseModel):
    """What a reset run needs: whose password, how long the e-mailed link stays valid, and
    why it is sent (the e-mail's wording)."""

    user_id: uuid.UUID
    token_ttl: timedelta
    purpose: LinkPurpose = LinkPurpose.RESET


class ResetEmail(BaseModel):
    """Input of the e-mail activity; the link id (``run_id``) fixes both the token and the send
    key. ``workflow_id`` names the run's workflow: an invitation's own workflow gets marked
    tokens (empty for runs started before invitations had their own workflow)."""

    user_id: uuid.UUID
    run_id: str
    token_ttl: timedelta
    purpose: LinkPurpose = LinkPurpose.RESET
    workflow_id: str = ""

    @property
    def token_purpose(self) -> LinkPurpose:
        invitation = self.workflow_id.startswith(INVITATION_WORKFLOW_PREFIX)
        return LinkPurpose.INVITATION if invitation else LinkPurpose.RESET


class ResetConfirmation(BaseModel):
    """The confirm update: the digest of the presented token and the already-hashed password."""

    token_digest: str
    password_hash: str


class PasswordChange(BaseModel):
    """Input of the activity that applies a confirmed reset, once per run."""

    user_id: uuid.UUID
    password_hash: str
    workflow_id: str
    run_id: str


def compose_reset_token(
    signing_key: str, user_id: uuid.UUID, run_id: str, purpose: LinkPurpose = LinkPurpose.RESET
) -> str:
    """The token of one link of a run (deterministic, so retries re-send the same one)."""
    mac = hmac.new(signing_key.encode(), (TOKEN_PURPOSE + run_id).encode(), hashlib.sha256)
    signature = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()
    mark = INVITATION_MARK if purpose is LinkPurpose.INVITATION else ""
    return f"{user_id.hex}.{signature}{mark}"


def reset_token_user(token: str) -> uuid.UUID | None:
    """The user a well-formed reset token names; ``None`` for anything malformed."""
    match = _TOKEN_SHAPE.match(token)
    return uuid.UUID(hex=match.group(1)) if match else None


def token_purpose(token: str) -> LinkPurpose:
    """Which workflow a well-formed token belongs to: an invitation's or a reset's."""
    return LinkPurpose.INVITATION if token.endswith(INVITATION_MARK) else LinkPurpose.RESET
