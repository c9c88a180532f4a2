"""Failures reach workflow history only as ciphertext: a database error inside an activity,
and an update's refusal.

The activity re-inserts an existing user (a unique-constraint violation whose statement carries
the e-mail address and the password hash) on SQLite and PostgreSQL, on the real dev server.
The stored history, read raw from the server, holds none of the error's text, parameters or
stack; an operator with the key decodes the failure and reads the message.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

# The workflows below live in this module, which the workflow sandbox re-imports: everything
# else it imports is passed through, as workflow modules do.
with workflow.unsafe.imports_passed_through():
    import pytest
    from temporalio.api.common.v1 import WorkflowExecution
    from temporalio.api.failure.v1 import Failure
    from temporalio.api.history.v1 import History
    from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryRequest
    from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError
    from temporalio.common import WorkflowIDReusePolicy
    from temporalio.exceptions import ActivityError, ApplicationError
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from core.codec import CodecKeyError, generate_key_spec, parse_keys
    from core.db import SessionFactory, transaction
    from core.temporal import data_converter
    from models.user import User

ACTIVITY = "register_user_again"


class DuplicateUser:
    """An activity that writes a second user with an existing user's e-mail and hash."""

    def __init__(self, sessions: SessionFactory) -> None:
        self._sessions = sessions

    @activity.defn(name=ACTIVITY)
    async def register_user_again(self, user_id: uuid.UUID) -> None:
        async with transaction(self._sessions) as session:
            existing = await session.get(User, user_id)
            assert existing is not None
            session.add(
                User(
                    email=existing.email,
                    full_name=existing.full_name,
                    password_hash=existing.password_hash,
                )
            )


@workflow.defn(name="FailureEncryptionCheck")
class FailureEncryptionCheck:
    """Runs the failing activity once and fails with its error."""

    @workflow.run
    async def run(self, user_id: uuid.UUID) -> None:
        """Register the user again (one attempt: the error is final)."""
        await workflow.execute_activity(
            ACTIVITY,
            user_id,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )


@workflow.defn(name="RefusalEncryptionCheck")
class RefusalEncryptionCheck:
    """Refuses an update the way the API's workflows do, with a message meant for the caller."""

    def __init__(self) -> None:
        self._done = False

    @workflow.run
    async def run(self) -> None:
        """Wait until told to finish."""
        await workflow.wait_condition(lambda: self._done)

    @workflow.update
    async def change(self, email: str) -> None:
        """Refused in the handler: the outcome is stored in history."""
        raise ApplicationError(f"{email} is already a member", type="AlreadyMember")

    @workflow.signal
    def finish(self) -> None:
        """End the run."""
        self._done = True


async def _raw_history(env: WorkflowEnvironment, workflow_id: str) -> bytes:
    """The history as the server stores it: fetched with the bare gRPC service, no converter."""
    response = await env.client.workflow_service.get_workflow_execution_history(
        GetWorkflowExecutionHistoryRequest(
            namespace=env.client.namespace,
            execution=WorkflowExecution(workflow_id=workflow_id),
            maximum_page_size=1000,
        )
    )
    assert not response.next_page_token
    return bytes(response.history.SerializeToString())


def _activity_failure(raw: bytes) -> Failure:
    history = History.FromString(raw)
    [failed] = [e for e in history.events if e.HasField("activity_task_failed_event_attributes")]
    return failed.activity_task_failed_event_attributes.failure


async def test_a_database_error_is_stored_encrypted(
    temporal_env: WorkflowEnvironment, sessions: SessionFactory, task_queue: str, database_url: str
) -> None:
    email = f"ada-{uuid.uuid4().hex[:10]}@example.com"
    password_hash = f"$argon2id$v=19$m=19456,t=2,p=1${secrets.token_hex(8)}${secrets.token_hex(16)}"
    async with transaction(sessions) as session:
        user = User(email=email, full_name="Ada Lovelace", password_hash=password_hash)
        session.add(user)
        await session.flush()
        user_id = user.id
    workflow_id = f"failure-encryption-{uuid.uuid4()}"

    async with Worker(
        temporal_env.client,
        task_queue=task_queue,
        workflows=[FailureEncryptionCheck],
        activities=[DuplicateUser(sessions).register_user_again],
    ):
        with pytest.raises(WorkflowFailureError) as raised:
            await temporal_env.client.execute_workflow(
                FailureEncryptionCheck.run,
                user_id,
                id=workflow_id,
                task_queue=task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )

    # The client, with the key, reads the error as the activity raised it.
    activity_error = raised.value.cause
    assert isinstance(activity_error, ActivityError)
    error = activity_error.cause
    assert isinstance(error, ApplicationError)
    assert error.type == "IntegrityError"
    constraint = "duplicate key value" if database_url.startswith("postgresql") else "UNIQUE"
    assert constraint in error.message
    assert "INSERT INTO users" in error.message
    # hide_parameters: the statement's values never enter the error text.
    assert "parameters hidden" in error.message
    for text in (error.message, str(error.cause)):
        assert email not in text
        assert password_hash not in text

    raw = await _raw_history(temporal_env, workflow_id)
    for plaintext in (
        email,
        password_hash,
        constraint,
        "INSERT INTO users",
        "parameters hidden",
        "sqlalchemy",  # file names in the stack trace
        "Traceback",
        __name__.rsplit(".", 1)[-1],
    ):
        assert plaintext.encode() not in raw, f"{plaintext!r} is in the stored history"

    stored = _activity_failure(raw)
    assert stored.message == "Encoded failure"
    assert stored.stack_trace == ""
    assert stored.encoded_attributes.metadata["encoding"] == b"binary/encrypted;v2"
    # Only the error's class name stays readable, for operators to tell failures apart.
    assert stored.application_failure_info.type == "IntegrityError"

    # An operator with the key decodes the stored failure: message and stack come back.
    decoded = await temporal_env.client.data_converter.decode_failure(_copy(stored))
    assert isinstance(decoded, ApplicationError)
    assert decoded.failure is not None
    assert constraint in decoded.message
    assert "INSERT INTO users" in decoded.message
    assert "sqlalchemy" in decoded.failure.stack_trace

    # Without the key the failure stays sealed.
    stranger = data_converter(parse_keys(generate_key_spec()))
    with pytest.raises(CodecKeyError, match="unknown key id"):
        await stranger.decode_failure(_copy(stored))


def _copy(failure: Failure) -> Failure:
    """Decoding works in place; each reader gets the stored failure as it was."""
    copy = Failure()
    copy.CopyFrom(failure)
    return copy


async def test_an_update_refusal_reaches_the_caller_decoded_and_history_encrypted(
    temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    """The API's routers read ``err.cause.message`` of a refused update: the client decodes it,
    while history stores it sealed."""
    email = f"grace-{uuid.uuid4().hex[:10]}@example.com"
    workflow_id = f"refusal-encryption-{uuid.uuid4()}"
    async with Worker(
        temporal_env.client, task_queue=task_queue, workflows=[RefusalEncryptionCheck]
    ):
        # By name: with the typed forms for this parameterless run here, a fresh whole-tree
        # mypy run mis-infers the typed handles of other modules (seen with mypy 2.4).
        handle = await temporal_env.client.start_workflow(
            "RefusalEncryptionCheck", id=workflow_id, task_queue=task_queue
        )
        with pytest.raises(WorkflowUpdateFailedError) as raised:
            await handle.execute_update("change", email)
        await handle.signal("finish")
        await handle.result()

    refusal = raised.value.cause
    assert isinstance(refusal, ApplicationError)
    assert refusal.type == "AlreadyMember"
    assert refusal.message == f"{email} is already a member"
    raw = await _raw_history(temporal_env, workflow_id)
    assert b"Encoded failure" in raw
    assert email.encode() not in raw
    assert b"already a member" not in raw
