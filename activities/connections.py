"""Connection activities: check credentials at the vendor, keep them in the secret store, and
record the connection. Credentials are read from the store here (and by live reads), never
carried by a workflow."""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from temporalio import activity
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from connectors import registry
from connectors.access import open_connection
from connectors.crm import CompanyDraft, ContactDraft, DealDraft
from connectors.http import AuthFailed, ConnectorError, as_application_error
from connectors.mail import Mailer
from connectors.oauth import exchange_code, oauth_client
from connectors.pacing import Pacer
from connectors.ports import Connector
from connectors.secrets import SecretStore, connection_path, staged_path
from core import audit, search
from core.db import SessionFactory, transaction
from core.plans import release_connection
from core.settings import Settings
from models.connection import (
    CheckOutcome,
    Connection,
    ConnectionAction,
    ConnectionCommand,
    ConnectionHealth,
    ConnectionStatus,
    ConnectionView,
    VerifiedAccount,
    WriteCommand,
    WrittenRecord,
)
from models.content import ContentItem, ContentStatus
from models.email import EmailMessage
from models.user import Membership, Role, User

log = logging.getLogger(__name__)
#: The signal a publishing workflow waiting for its connection is sent once it works again.
CONNECTION_RESTORED = "connection_restored"


def open_row(
    settings: Settings, store: SecretStore, row: Connection, pacer: Pacer
) -> AbstractAsyncContextManager[Connector]:
    """The port of a connection row, with its stored credentials, paced to its vendor's rate
    limit (see ``open_connection``)."""
    return open_connection(
        settings,
        store,
        tenant_id=row.tenant_id,
        connection_id=row.id,
        connector_id=row.connector_id,
        auth_kind=row.auth_kind,
        connection_settings=row.settings,
        pacer=pacer,
    )


async def start_connection_check(
    client: Client, settings: Settings, connection: Connection
) -> None:
    """Start the connection's ``test`` (it marks the connection ``auth_failed`` and tells the
    tenant admins once); a change already running checks the credentials too."""
    command = ConnectionCommand(
        action=ConnectionAction.TEST,
        connection_id=connection.id,
        tenant_id=connection.tenant_id,
        connector_id=connection.connector_id,
        auth_kind=connection.auth_kind,
        label=connection.label,
        settings=connection.settings,
    )
    try:
        await client.start_workflow(
            "ConnectionWorkflow",
            command,
            id=f"connection:{connection.id}",
            task_queue=settings.temporal_task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            static_summary=f"Connection {connection.connector_id}: test",
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(search.TENANT_ID, str(connection.tenant_id)),
                    SearchAttributePair(search.BIZ_PROCESS, "connection"),
                ]
            ),
        )
    except WorkflowAlreadyStartedError:
        return


class ConnectionActivities:
    """Activities bound to the database, the secret store and the connector registry."""

    def __init__(
        self, sessions: SessionFactory, settings: Settings, secrets: SecretStore, mailer: Mailer
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._secrets = secrets
        self._mailer = mailer

    @activity.defn
    async def check_credentials(self, command: ConnectionCommand) -> CheckOutcome:
        """Ask the vendor who the credentials act as: the staged ones for a connect, the
        stored ones otherwise. A refusal is an outcome; a vendor that cannot answer now is
        retried (its ``Retry-After`` honoured)."""
        try:
            async with self._open(command, _credentials_path(command)) as connector:
                account = await connector.verify()
        except AuthFailed as exc:
            return CheckOutcome(health=ConnectionHealth.AUTH_FAILED, error=exc.message)
        except ConnectorError as exc:
            if exc.retryable:
                raise as_application_error(exc) from None
            return CheckOutcome(health=ConnectionHealth.UNREACHABLE, error=exc.message)
        except ValidationError as exc:  # stored data that no longer fits the connector
            return CheckOutcome(health=ConnectionHealth.AUTH_FAILED, error=_first_error(exc))
        return CheckOutcome(
            health=ConnectionHealth.HEALTHY,
            account=VerifiedAccount.model_validate(account, from_attributes=True),
        )

    @activity.defn
    async def exchange_authorization_code(self, command: ConnectionCommand) -> CheckOutcome:
        """Trade the authorization code the callback staged for tokens, staged in its place;
        a refused code is an outcome (the consent must be given again)."""
        staged = staged_path(command.tenant_id, command.connection_id)
        grant = await self._secrets.get(staged)
        spec = registry.get_spec(command.connector_id)
        client = oauth_client(self._settings, spec)
        if grant is None or "authorization_code" not in grant or client is None:
            return CheckOutcome(
                health=ConnectionHealth.AUTH_FAILED, error="No authorization code to exchange."
            )
        context = registry.context_from_settings(self._settings)
        try:
            async with registry.client_from_settings(self._settings) as http:
                tokens = await exchange_code(
                    spec,
                    spec.settings_model.model_validate(command.settings),
                    client,
                    code=grant["authorization_code"],
                    redirect_uri=grant["redirect_uri"],
                    http=http,
                    context=context,
                )
        except AuthFailed as exc:
            await self._secrets.delete(staged)
            return CheckOutcome(health=ConnectionHealth.AUTH_FAILED, error=exc.message)
        except ConnectorError as exc:
            raise as_application_error(exc) from None
        await self._secrets.put(staged, registry.dump_credentials(tokens))
        return CheckOutcome(health=ConnectionHealth.HEALTHY)

    @activity.defn
    async def adopt_credentials(self, command: ConnectionCommand) -> None:
        """Make the staged credentials the connection's (replacing older ones)."""
        staged = staged_path(command.tenant_id, command.connection_id)
        credentials = await self._secrets.get(staged)
        if credentials is not None:  # None: adopted by an earlier attempt
            await self._secrets.put(
                connection_path(command.tenant_id, command.connection_id), credentials
            )
            await self._secrets.delete(staged)

    @activity.defn
    async def discard_staged_credentials(self, command: ConnectionCommand) -> None:
        """Forget credentials the vendor refused: nothing of them is kept, and a new
        connection's slot in the plan is free again."""
        await self._secrets.delete(staged_path(command.tenant_id, command.connection_id))
        async with transaction(self._sessions) as session:
            await release_connection(session, command.connection_id)

    @activity.defn
    async def record_connection(
        self, command: ConnectionCommand, check: CheckOutcome
    ) -> ConnectionView:
        """Write the connection's row for a connect or a test, and audit a connect. A new
        connection takes the place of the slot held for it, in the same transaction."""
        now = datetime.now(UTC)
        async with transaction(self._sessions) as session:
            row = await session.get(Connection, command.connection_id)
            if row is None:
                await release_connection(session, command.connection_id)
                row = Connection(
                    id=command.connection_id,
                    tenant_id=command.tenant_id,
                    connector_id=command.connector_id,
                    auth_kind=command.auth_kind,
                    label=command.label,
                    settings=command.settings,
                    status=ConnectionStatus.CONNECTED,
                )
                session.add(row)
            elif command.action is ConnectionAction.CONNECT:
                row.settings, row.status = command.settings, ConnectionStatus.CONNECTED
                row.label = command.label or row.label
            row.health, row.last_error, row.checked_at = check.health, check.error, now
            if check.health is ConnectionHealth.HEALTHY:
                row.auth_notified_at = None  # a later auth failure is news again
            if check.account is not None:
                row.account = check.account.model_dump(mode="json")
            waiting = (
                await _waiting_for(session, row) if row.health is ConnectionHealth.HEALTHY else []
            )
            if command.action is ConnectionAction.CONNECT:
                await audit.append(
                    session,
                    "connection.connected",
                    tenant_id=command.tenant_id,
                    actor=audit.Actor(user_id=command.requested_by),
                    data={
                        "connection_id": str(command.connection_id),
                        "connector": command.connector_id,
                    },
                    idempotency_key=f"{activity.info().workflow_run_id}:connected",
                )
            await session.flush()
            view = ConnectionView.of(row)
        await _restore(activity.client(), waiting)
        return view

    @activity.defn
    async def notify_auth_failure(self, command: ConnectionCommand) -> bool:
        """Tell the tenant admins, once per failure episode, that the connection's credentials
        stopped working; ``False`` when they were told already.

        The e-mails go out before the episode is marked told: a retry re-sends under the same
        keys (the mail port delivers each key once), so nobody is told twice or never.
        """
        async with self._sessions() as session:
            row = await session.get(Connection, command.connection_id)
            if row is None or row.auth_notified_at is not None:
                return False
            admins = (
                await session.execute(
                    select(User.id, User.email)
                    .join(Membership, Membership.user_id == User.id)
                    .where(
                        Membership.tenant_id == command.tenant_id,
                        Membership.role == Role.TENANT_ADMIN,
                        User.is_active,
                    )
                )
            ).all()
        link = f"{self._settings.public_app_url.rstrip('/')}/connections/{row.id}"
        for user_id, address in admins:
            await self._mailer.send(
                EmailMessage(
                    idempotency_key=f"{activity.info().workflow_run_id}:auth-failed:{user_id}",
                    to=address,
                    subject=f"Reconnect {row.label}: its credentials stopped working",
                    body=(
                        f"The {row.connector_id} connection {row.label!r} was refused by the "
                        f"vendor ({row.last_error or 'authentication failed'}).\n\n"
                        f"Reconnect it with new credentials at {link}.\n"
                    ),
                    tenant_id=command.tenant_id,
                )
            )
        async with transaction(self._sessions) as session:
            told = await session.get(Connection, command.connection_id)
            if told is not None:
                told.auth_notified_at = datetime.now(UTC)
        return True

    @activity.defn
    async def write_record(self, write: WriteCommand) -> WrittenRecord:
        """Create the record in the tenant's CRM unless it exists (found by the write id as
        its external id), and audit the write once."""
        singular = _SINGULAR[write.resource]
        draft = _DRAFTS[write.resource].model_validate(
            {**write.record, "external_id": str(write.write_id)}
        )
        connection = write.connection
        try:
            async with self._open(
                connection, connection_path(connection.tenant_id, connection.connection_id)
            ) as port:
                found = await getattr(port, f"find_{singular}_by_external_id")(str(write.write_id))
                record = found or await getattr(port, f"create_{singular}")(draft)
        except ConnectorError as exc:
            raise as_application_error(exc) from None
        async with transaction(self._sessions) as session:
            await audit.append(
                session,
                f"connection.{singular}_created",
                tenant_id=connection.tenant_id,
                actor=audit.Actor(user_id=connection.requested_by),
                data={"connection_id": str(connection.connection_id), "record_id": record.id},
                idempotency_key=f"connection-write:{write.write_id}",
            )
        return WrittenRecord(
            resource=write.resource,
            record_id=record.id,
            created=found is None,
            record=record.model_dump(mode="json"),
        )

    @activity.defn
    async def disconnect(self, command: ConnectionCommand) -> ConnectionView | None:
        """Revoke the credentials at the vendor where it can, delete them, mark the connection
        disconnected and audit it. A vendor that cannot revoke does not hold this up."""
        path = connection_path(command.tenant_id, command.connection_id)
        revoked = False
        if await self._secrets.get(path) is not None:
            revoked = await self._revoke(command, path)
            await self._secrets.delete(path)
        async with transaction(self._sessions) as session:
            row = await session.scalar(
                select(Connection).where(
                    Connection.id == command.connection_id,
                    Connection.tenant_id == command.tenant_id,
                )
            )
            if row is None:
                return None
            row.status = ConnectionStatus.DISCONNECTED
            await audit.append(
                session,
                "connection.disconnected",
                tenant_id=command.tenant_id,
                actor=audit.Actor(user_id=command.requested_by),
                data={"connection_id": str(row.id), "revoked_at_vendor": revoked},
                idempotency_key=f"{activity.info().workflow_run_id}:disconnected",
            )
            await session.flush()
            return ConnectionView.of(row)

    async def _revoke(self, command: ConnectionCommand, path: str) -> bool:
        try:
            async with self._open(command, path) as connector:
                revoked: bool = await connector.revoke()
                return revoked
        except (ConnectorError, ValidationError) as exc:
            log.warning(
                "connection %s: revoking at the vendor failed: %s", command.connection_id, exc
            )
            return False

    def _open(
        self, command: ConnectionCommand, path: str
    ) -> AbstractAsyncContextManager[Connector]:
        return open_connection(
            self._settings,
            self._secrets,
            tenant_id=command.tenant_id,
            connection_id=command.connection_id,
            connector_id=command.connector_id,
            auth_kind=command.auth_kind,
            connection_settings=command.settings,
            credentials_path=path,
        )


_SINGULAR = {"contacts": "contact", "companies": "company", "deals": "deal"}
_DRAFTS: dict[str, type[BaseModel]] = {
    "contacts": ContactDraft,
    "companies": CompanyDraft,
    "deals": DealDraft,
}


async def _waiting_for(session: Any, connection: Connection) -> list[str]:
    """The workflow ids of the content items waiting for this connection to work again."""
    ids = await session.scalars(
        select(ContentItem.id).where(
            ContentItem.connection_id == connection.id,
            ContentItem.status == ContentStatus.WAITING_FOR_CONNECTION,
        )
    )
    return [f"publish:{content_id}" for content_id in ids]


async def _restore(client: Client, workflow_ids: list[str]) -> None:
    """Tell each waiting workflow its connection works again (one that ended is skipped)."""
    for workflow_id in workflow_ids:
        try:
            await client.get_workflow_handle(workflow_id).signal(CONNECTION_RESTORED)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise


def _credentials_path(command: ConnectionCommand) -> str:
    if command.action is ConnectionAction.CONNECT:
        return staged_path(command.tenant_id, command.connection_id)
    return connection_path(command.tenant_id, command.connection_id)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}"
