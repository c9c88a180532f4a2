"""Connection: one change to a tenant's connection to its own system (connect, test,
disconnect). The credentials never pass through here: activities read them from the secret
store by the connection's id."""

from __future__ import annotations

import uuid
from contextlib import suppress
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    # Activities by name: their module reaches vendors over HTTP, which no workflow imports.
    from core.search import BIZ_STATUS
    from models.connection import (
        CheckOutcome,
        ConnectionAction,
        ConnectionCommand,
        ConnectionHealth,
        ConnectionOutcome,
        ConnectionView,
        WriteCommand,
        WrittenRecord,
    )

PROCESS = "connection"
# A person waits for a connect or a test: a vendor that does not answer in this time is
# reported unreachable rather than retried for longer.
_CHECK_WINDOW = timedelta(seconds=20)
_STORE_TIMEOUT = timedelta(seconds=30)
_NOTICE_WINDOW = timedelta(hours=1)


def workflow_id(connection_id: uuid.UUID) -> str:
    return f"connection:{connection_id}"


def write_workflow_id(write_id: uuid.UUID) -> str:
    return f"connection-write:{write_id}"


@workflow.defn
class ConnectionWorkflow:
    """Carry out one change to a connection, then end (one change at a time per connection).

    - **connect** (also a reconnect): for an OAuth vendor, first wait (at most
      ``consent_timeout``) for the provider's redirect and exchange its code for tokens; then
      check the staged credentials with the vendor; accepted,
      they replace the connection's credentials and the connection is recorded ``connected``
      and ``healthy``; refused, they are discarded and nothing changes.
    - **test**: check the stored credentials and record the connection's health; credentials
      that stopped working are reported to the tenant admins (once until they work again).
    - **disconnect**: revoke at the vendor where it can, delete the credentials, record the
      connection ``disconnected``.

    ``BizStatus`` ends as the connection's health (or ``disconnected``).
    """

    def __init__(self) -> None:
        self._consent: bool | None = None

    @workflow.run
    async def run(self, command: ConnectionCommand) -> ConnectionOutcome:
        """Run the command's action and return what it found."""
        if command.action is ConnectionAction.DISCONNECT:
            return await self._disconnect(command)
        if command.consent_timeout is not None:
            refused = await self._oauth_grant(command, command.consent_timeout)
            if refused is not None:
                return refused
        check = await self._check(command)
        self._publish(check.health.value)
        if command.action is ConnectionAction.TEST:
            view = await self._record(command, check)
            if check.health is ConnectionHealth.AUTH_FAILED:
                await self._notify_auth_failure(command)
            return ConnectionOutcome(action=command.action, check=check, connection=view)
        if check.health is not ConnectionHealth.HEALTHY:
            await self._discard(command)
            return ConnectionOutcome(action=command.action, check=check)
        await workflow.execute_activity(
            "adopt_credentials",
            command,
            start_to_close_timeout=_STORE_TIMEOUT,
            summary="keep the accepted credentials",
        )
        view = await self._record(command, check)
        return ConnectionOutcome(action=command.action, check=check, connection=view)

    @workflow.signal
    def consent(self, given: bool) -> None:
        """The provider sent the tenant admin back: consent given (the API staged the
        authorization code in the secret store) or denied. Only the first answer counts."""
        if self._consent is None:
            self._consent = given

    async def _oauth_grant(
        self, command: ConnectionCommand, wait: timedelta
    ) -> ConnectionOutcome | None:
        """Wait for the consent, then exchange its code for tokens (staged for the check);
        the outcome when there is nothing to check."""
        until = workflow.now() + wait
        workflow.set_current_details(f"waiting for consent until {until:%Y-%m-%d %H:%M} UTC")
        with suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: self._consent is not None, timeout=wait, timeout_summary="consent expiry"
            )
        if not self._consent:
            await self._discard(command)
            reason = "The consent was denied." if self._consent is False else "Consent expired."
            return ConnectionOutcome(
                action=command.action,
                check=CheckOutcome(health=ConnectionHealth.AUTH_FAILED, error=reason),
                consent_expired=self._consent is None,
            )
        exchanged: CheckOutcome = await workflow.execute_activity(
            "exchange_authorization_code",
            command,
            result_type=CheckOutcome,
            start_to_close_timeout=timedelta(seconds=15),
            schedule_to_close_timeout=_CHECK_WINDOW,
            summary="exchange the authorization code for tokens",
        )
        if exchanged.health is ConnectionHealth.HEALTHY:
            return None
        await self._discard(command)
        return ConnectionOutcome(action=command.action, check=exchanged)

    async def _notify_auth_failure(self, command: ConnectionCommand) -> None:
        """Tell the tenant admins (once per failure episode); a mail outage is logged."""
        try:
            await workflow.execute_activity(
                "notify_auth_failure",
                command,
                start_to_close_timeout=timedelta(seconds=60),
                schedule_to_close_timeout=_NOTICE_WINDOW,
                summary="e-mail the tenant admins: reconnect",
            )
        except ActivityError as err:
            workflow.logger.warning("the reconnect notice could not be sent: %s", err.cause)

    async def _discard(self, command: ConnectionCommand) -> None:
        await workflow.execute_activity(
            "discard_staged_credentials",
            command,
            start_to_close_timeout=_STORE_TIMEOUT,
            summary="forget the refused credentials",
        )

    async def _record(self, command: ConnectionCommand, check: CheckOutcome) -> ConnectionView:
        view: ConnectionView = await workflow.execute_activity(
            "record_connection",
            args=[command, check],
            result_type=ConnectionView,
            start_to_close_timeout=_STORE_TIMEOUT,
            summary=f"record the connection: {check.health.value}",
        )
        return view

    async def _check(self, command: ConnectionCommand) -> CheckOutcome:
        workflow.set_current_details(f"checking the credentials with {command.connector_id}")
        try:
            check: CheckOutcome = await workflow.execute_activity(
                "check_credentials",
                command,
                result_type=CheckOutcome,
                start_to_close_timeout=timedelta(seconds=15),
                schedule_to_close_timeout=_CHECK_WINDOW,
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=5)),
                summary=f"ask {command.connector_id} who the credentials are",
            )
        except ActivityError as err:
            reason = getattr(err.cause, "message", None) or "no answer"
            return CheckOutcome(
                health=ConnectionHealth.UNREACHABLE, error=f"The vendor did not answer: {reason}"
            )
        return check

    async def _disconnect(self, command: ConnectionCommand) -> ConnectionOutcome:
        workflow.set_current_details("revoking and deleting the credentials")
        view: ConnectionView | None = await workflow.execute_activity(
            "disconnect",
            command,
            result_type=ConnectionView | None,  # type: ignore[arg-type]
            start_to_close_timeout=timedelta(seconds=60),
            summary="revoke at the vendor, delete the credentials",
        )
        self._publish("disconnected")
        return ConnectionOutcome(action=command.action, connection=view)

    def _publish(self, status: str) -> None:
        workflow.upsert_search_attributes([BIZ_STATUS.value_set(status)])


@workflow.defn
class ConnectionWriteWorkflow:
    """Create one record in a tenant's connected system, exactly once.

    The write id is the record's external id at the vendor: a retry (of the activity, or of
    the whole request with the same ``Idempotency-Key``) finds the record it created instead
    of creating a second one. The vendor's rate limits are honoured by the activity's retries;
    a refusal (bad data, revoked credentials) ends the write with the vendor's reason.
    """

    @workflow.run
    async def run(self, write: WriteCommand) -> WrittenRecord:
        """Write the record and return it as the vendor holds it."""
        workflow.set_current_details(
            f"creating {write.resource} in {write.connection.connector_id}"
        )
        written: WrittenRecord = await workflow.execute_activity(
            "write_record",
            write,
            result_type=WrittenRecord,
            start_to_close_timeout=timedelta(seconds=30),
            schedule_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(maximum_interval=timedelta(minutes=1)),
            summary=f"create {write.resource} at {write.connection.connector_id}",
        )
        workflow.upsert_search_attributes([BIZ_STATUS.value_set("written")])
        return written
