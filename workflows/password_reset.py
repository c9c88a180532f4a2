"""Password links (reset, invitation): e-mail a single-use link, accept one confirmation before it
expires."""

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
        INVITATION_WORKFLOW_PREFIX,
        LinkPurpose,
        PasswordChange,
        PasswordResetInput,
        ResetConfirmation,
        ResetEmail,
        ResetStatus,
    )

PROCESS = "password_reset"
# The error type of every refused confirmation; the API answers it with 400.
INVALID_RESET_TOKEN = "InvalidResetToken"  # noqa: S105 - an error type, not a secret
# How long the link's e-mail may be retried before the run gives up on it.
_SEND_WINDOW = timedelta(minutes=10)


def workflow_id(user_id: uuid.UUID, purpose: LinkPurpose = LinkPurpose.RESET) -> str:
    """One workflow id per user and purpose: a reset never touches an invitation's run."""
    if purpose is LinkPurpose.INVITATION:
        return f"{INVITATION_WORKFLOW_PREFIX}{user_id}"
    return f"password-reset:{user_id}"


def _refused(reason: str) -> ApplicationError:
    return ApplicationError(reason, type=INVALID_RESET_TOKEN, non_retryable=True)


@workflow.defn
class PasswordResetWorkflow:
    """Send a password link (a reset, or an invitation's first password), then wait at most the
    token's lifetime for the confirmation.

    Only the SHA-256 digest of the e-mailed token is kept; the confirm update must present a
    token with that digest. A confirmation changes the password, revokes every session and
    ends the run (``completed``); when the lifetime passes first, the run ends ``expired``; a
    link that cannot be e-mailed ends it ``undeliverable``. A new request for the same link
    (the ``renew`` signal) e-mails a new link that replaces the old one, never while a
    confirmation is being applied; one arriving as the run ends starts a fresh run.
    """

    def __init__(self) -> None:
        self._status = ResetStatus.PENDING
        self._token_digest: str | None = None
        self._user_id: uuid.UUID | None = None
        self._confirming = False
        self._deadline_passed = False
        self._links = 0
        self._renewals: list[PasswordResetInput] = []

    @workflow.run
    async def run(self, request: PasswordResetInput) -> ResetStatus:
        """E-mail the link, wait for the confirmation until the token expires; renew the link
        on a new request."""
        self._user_id = request.user_id
        self._publish_status()
        link_id = workflow.info().run_id
        while await self._send_link(request, link_id):
            if not await self._wait_for_confirmation(request.token_ttl):
                break
            request = self._renewals.pop()
            self._renewals.clear()
            self._links += 1
            link_id = f"{workflow.info().run_id}:{self._links}"
        if self._status is ResetStatus.PENDING:
            self._set_status(ResetStatus.EXPIRED)
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._renewals:  # asked for again as this run ended: a fresh run, a fresh link
            workflow.continue_as_new(self._renewals[-1])
        return self._status

    @workflow.signal
    def renew(self, request: PasswordResetInput) -> None:
        """A new request for this user's link: e-mail a new one that replaces the current one
        (after the one being sent, if any)."""
        # The request that started the run arrives before the run begins: the run answers it.
        if request.user_id != self._user_id:
            return
        self._renewals.append(request)

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
                summary="set the new password, revoke sessions",
            )
        except ActivityError as err:
            raise _refused("The account can no longer be reset.") from err
        finally:
            self._confirming = False
        self._set_status(ResetStatus.COMPLETED)

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
        """``pending``, ``completed``, ``expired`` or ``undeliverable``."""
        return self._status

    async def _send_link(self, request: PasswordResetInput, link_id: str) -> bool:
        """E-mail a link and keep its digest; ``False`` (the run ends) when it cannot be sent."""
        self._token_digest = None
        info = workflow.info()
        workflow.set_current_details(f"sending the {request.purpose.value} link")
        try:
            self._token_digest = await workflow.execute_activity_method(
                PasswordResetActivities.send_password_reset_email,
                ResetEmail(
                    user_id=request.user_id,
                    run_id=link_id,
                    token_ttl=request.token_ttl,
                    purpose=request.purpose,
                    workflow_id=info.workflow_id,
                ),
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=_SEND_WINDOW,
                summary=f"e-mail the {request.purpose.value} link",
            )
        except ActivityError as err:
            workflow.logger.warning("the password link could not be e-mailed: %s", err.cause)
            self._set_status(ResetStatus.UNDELIVERABLE)
            return False
        return True

    async def _wait_for_confirmation(self, ttl: timedelta) -> bool:
        """Wait for the confirmation or a renewal, at most ``ttl``; ``True`` for a renewal."""
        until = workflow.now() + ttl
        workflow.set_current_details(
            f"waiting for the confirmation until {until:%Y-%m-%d %H:%M} UTC"
        )
        try:
            await workflow.wait_condition(
                lambda: (
                    self._status is ResetStatus.COMPLETED
                    or bool(self._renewals and not self._confirming)
                ),
                timeout=ttl,
                timeout_summary="reset token expiry",
            )
        except TimeoutError:  # the token lifetime passed
            self._deadline_passed = True
            # A confirmation accepted before the deadline still finishes.
            await workflow.wait_condition(lambda: not self._confirming)
            return False
        return self._status is ResetStatus.PENDING

    def _set_status(self, status: ResetStatus) -> None:
        self._status = status
        self._publish_status()

    def _publish_status(self) -> None:
        workflow.upsert_search_attributes([BIZ_STATUS.value_set(self._status.value)])
