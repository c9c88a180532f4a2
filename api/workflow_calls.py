"""The API's calls into workflows: each one bounded by a deadline, retries made safe by keys.

Every update, query and start a route sends goes through here, so that no request waits on a
workflow without a deadline: a workflow too slow to answer gives a 504 problem (the update may
still be applied; a retry with the same ``Idempotency-Key`` attaches to it), and an unreachable
Temporal gives a 503 (see :func:`api.problems.install`).

A client that retries a request sends the same ``Idempotency-Key`` header; the update id is
derived from it (per caller and per update), so Temporal applies the update once and answers
the retry with the first result. Effects the update causes outside (a Stripe SetupIntent, say)
are keyed on the update id in the workflow.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Header
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import CurrentPrincipal, SessionDep, SettingsDep, TemporalDep
from api.tenancy import owned
from core.errors import Conflict, WorkflowTimeout
from core.security import Principal
from core.settings import Settings
from models.base import Base


async def idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Makes a retried request safe: the same key has one effect and answer.",
        ),
    ] = None,
) -> str | None:
    return key


IdempotencyKey = Annotated[str | None, Depends(idempotency_key)]


def update_id(update: str, principal: Principal, key: str | None) -> str | None:
    """The update id for a client's idempotency key, or ``None`` (a fresh one) without a key.

    The caller's id is part of it, so two users' keys never meet; the update's name too, so a
    key reused for another action is another update.
    """
    if key is None:
        return None
    digest = hashlib.sha256(f"{principal.user_id}\x00{update}\x00{key}".encode()).hexdigest()
    return f"{update}:{digest[:40]}"


@asynccontextmanager
async def deadline(settings: Settings) -> AsyncIterator[None]:
    """Bound a call into Temporal by ``workflow_call_timeout``; past it, a 504 problem."""
    seconds = settings.workflow_call_timeout.total_seconds()
    try:
        async with asyncio.timeout(seconds):
            yield
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise WorkflowTimeout(
            f"The workflow did not answer within {seconds:g} s. A change may still be applied: "
            "retry with the same Idempotency-Key to get its result.",
            headers={"Retry-After": "1"},
        ) from None


async def execute_update(
    handle: WorkflowHandle[Any, Any],
    update: Any,
    argument: Any,
    *,
    settings: Settings,
    update_id: str | None = None,
) -> Any:
    """Send an update and wait for its result, at most ``workflow_call_timeout``."""
    async with deadline(settings):
        return await handle.execute_update(update, argument, id=update_id)


async def query(handle: WorkflowHandle[Any, Any], query: Any, *, settings: Settings) -> Any:
    """Ask a workflow a query, at most ``workflow_call_timeout``."""
    async with deadline(settings):
        return await handle.query(query)


View = TypeVar("View")


class Entity(Generic[View]):
    """An entity workflow (a content item, a task) reached only through its projection row in
    the caller's tenant (:func:`api.tenancy.owned`): its state query and its updates, bounded
    by the call deadline, with update ids from the request's ``Idempotency-Key``. ``refuse``
    turns the workflow's refusals into problems; ``view`` shapes what the routes answer."""

    def __init__(
        self,
        session: AsyncSession,
        client: Client,
        settings: Settings,
        principal: Principal,
        key: str | None,
        *,
        model: type[Base],
        workflow_id: Callable[[uuid.UUID], str],
        state_query: Any,
        refuse: Callable[[ApplicationError], None],
        view: Callable[[Any], View],
    ) -> None:
        self.session, self.client, self.settings = session, client, settings
        self.principal, self.key = principal, key
        self._model, self._workflow_id, self._query = model, workflow_id, state_query
        self._refuse, self._view = refuse, view

    async def handle(self, row_id: uuid.UUID) -> WorkflowHandle[Any, Any]:
        await owned(self.session, self._model, row_id, self.principal)  # 404 unless ours
        return self.client.get_workflow_handle(self._workflow_id(row_id))

    async def state(self, row_id: uuid.UUID) -> View:
        return self._view(
            await query(await self.handle(row_id), self._query, settings=self.settings)
        )

    async def update(self, row_id: uuid.UUID, update: Any, argument: Any) -> View:
        """Send an update; refusals become problems, and a run that has ended (the entity is
        closed) a 409."""
        handle = await self.handle(row_id)
        name = getattr(update, "__name__", str(update))
        try:
            state = await execute_update(
                handle,
                update,
                argument,
                settings=self.settings,
                update_id=update_id(name, self.principal, self.key),
            )
        except WorkflowUpdateFailedError as err:
            if isinstance(err.cause, ApplicationError):
                self._refuse(err.cause)
            raise
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise Conflict("It is closed: it cannot change any more.") from None
            raise
        return self._view(state)


def entity_dependency(
    model: type[Base],
    *,
    workflow_id: Callable[[uuid.UUID], str],
    state_query: Any,
    refuse: Callable[[ApplicationError], None],
    view: Callable[[Any], View],
) -> Callable[..., Coroutine[Any, Any, Entity[View]]]:
    """A route dependency giving the :class:`Entity` of one kind of workflow for the request."""

    async def entity(
        session: SessionDep,
        client: TemporalDep,
        settings: SettingsDep,
        principal: CurrentPrincipal,
        key: IdempotencyKey,
    ) -> Entity[View]:
        return Entity(
            session,
            client,
            settings,
            principal,
            key,
            model=model,
            workflow_id=workflow_id,
            state_query=state_query,
            refuse=refuse,
            view=view,
        )

    return entity
