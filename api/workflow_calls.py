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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, Header
from temporalio.client import WorkflowHandle, WorkflowUpdateRPCTimeoutOrCancelledError

from core.errors import WorkflowTimeout
from core.security import Principal
from core.settings import Settings


def idempotency_key(
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
