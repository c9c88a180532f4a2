"""Password reset: e-mail a single-use link, accept one confirmation before it expires."""

from __future__ import annotations

import hmac
import uuid
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.identity import PasswordResetActivities
    from core.search import BIZ_STATUS
    from models.password_reset import (
        PasswordChange,
        PasswordResetInput,
        ResetConfirmation,
        ResetEmail,
        ResetStatus,
    )

PROCESS = "password_reset"
# The error type of every refused confirmation; the API answers it with 400.
INVALID_RESET_TOKEN = "InvalidResetToken"  # noqa: S105 - an error type, not a secret


def workflow_id(user_id: uuid.UUID) -> str:
    return f"password-reset:{user_id}"


def _refused(reason: str) -> ApplicationError:
    return ApplicationError(reason, type=INVALID_RESET_TOKEN, non_retryable=True)


@workflow.defn
class PasswordResetWorkflow:
    """Send a reset link, then wait at most the token's lifetime for the confirmation.

    Only the SHA-256 digest of the e-mailed token is kept; the confirm update must present a
    token with that digest. A confirmation changes the password, revokes every session and
    ends the run (``completed``); when the lifetime passes first, the run ends ``expired``.
    A new request for the same user terminates this run, which kills its link.
    """

    def __init__(self) -> None:
        self._status = ResetStatus.PENDING
        self._token_digest: str | None = None
        self._user_id: uuid.UUID | None = None
        self._confirming = False
        self._deadline_passed = False

    @workflow.run
    async def run(self, request: PasswordResetInput) -> ResetStatus:
        """E-mail the link, wait for the confirmation until the token expires."""
        self._user_id = request.user_id
        self._publish_status()
        self._token_digest = await workflow.execute_activity_method(
            PasswordResetActivities.send_password_reset_email,
            ResetEmail(
                user_id=request.user_id,
                run_id=workflow.info().run_id,
                token_ttl=request.token_ttl,
                purpose=request.purpose,
            ),
            start_to_close_timeout=timedelta(seconds=30),
        )
        try:
            await workflow.wait_condition(
                lambda: self._status is ResetStatus.COMPLETED,
                timeout=request.token_ttl,
                timeout_summary="reset token expiry",
            )
        except TimeoutError:  # the token lifetime passed
            self._deadline_passed = True
            # A confirmation accepted before the deadline still finishes.
            await workflow.wait_condition(lambda: not self._confirming)
        if self._status is not ResetStatus.COMPLETED:
            self._status = ResetStatus.EXPIRED
            self._publish_status()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._status

    @workflow.update
    async def confirm(self, confirmation: ResetConfirmation) -> None:
        """Set the new password hash, reset lockout, revoke every session, audit; then end."""
        assert self._user_id is not None  # the validator admits nothing before the e-mail
        info = workflow.info()
        self._confirming = True
        try:
            await workflow.execute_activity_method(
                PasswordResetActivities.apply_password_reset,
                PasswordChange(
                    user_id=self._user_id,
                    password_hash=confirmation.password_hash,
                    workflow_id=info.workflow_id,
                    run_id=info.run_id,
                ),
                start_to_close_timeout=timedelta(seconds=30),
            )
        except ActivityError as err:
            raise _refused("The account can no longer be reset.") from err
        finally:
            self._confirming = False
        self._status = ResetStatus.COMPLETED
        self._publish_status()

    @confirm.validator
    def _check_confirmation(self, confirmation: ResetConfirmation) -> None:
        """Refuse a token of another run, a used token and an expired one."""
        spent = self._status is not ResetStatus.PENDING or self._confirming
        if spent or self._deadline_passed or self._token_digest is None:
            raise _refused("This reset link has expired or was already used.")
        if not hmac.compare_digest(confirmation.token_digest, self._token_digest):
            raise _refused("This reset link is not valid.")

    @workflow.query
    def status(self) -> ResetStatus:
        """``pending``, ``completed`` or ``expired``."""
        return self._status

    def _publish_status(self) -> None:
        workflow.upsert_search_attributes([BIZ_STATUS.value_set(self._status.value)])
