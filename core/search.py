"""The project's search attributes, declared once.

Operators find workflows in the Temporal UI by these. They never hold personal data.
"""

from __future__ import annotations

import uuid
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)

from core.settings import Settings

TENANT_ID = SearchAttributeKey.for_keyword("TenantId")
BIZ_PROCESS = SearchAttributeKey.for_keyword("BizProcess")
BIZ_STATUS = SearchAttributeKey.for_keyword("BizStatus")
#: The earliest SLA deadline of a task still running (tasks' response and resolution clocks).
SLA_DEADLINE = SearchAttributeKey.for_datetime("SlaDeadline")

ALL: tuple[SearchAttributeKey[Any], ...] = (TENANT_ID, BIZ_PROCESS, BIZ_STATUS, SLA_DEADLINE)


def type_name(key: SearchAttributeKey[Any]) -> str:
    """The attribute's type as the CLI and the UI name it (``Keyword``, ``Datetime``)."""
    return IndexedValueType.Name(indexed_type(key)).removeprefix("INDEXED_VALUE_TYPE_").title()


def indexed_type(key: SearchAttributeKey[Any]) -> IndexedValueType.ValueType:
    """The attribute's type in the operator service's terms."""
    return IndexedValueType.ValueType(int(key.indexed_value_type))


def cli_flags() -> list[str]:
    """``--search-attribute Name=Type`` flags for ``temporal server start-dev``."""
    flags: list[str] = []
    for key in ALL:
        flags += ["--search-attribute", f"{key.name}={type_name(key)}"]
    return flags


async def register(client: Client) -> None:
    """Register the attributes through the operator service (servers without a CLI flag)."""
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={key.name: indexed_type(key) for key in ALL},
        )
    )


def start_options(
    settings: Settings,
    *,
    workflow_id: str,
    tenant_id: uuid.UUID,
    process: str,
    status: str,
    summary: str,
) -> dict[str, Any]:
    """How an entity workflow the API creates starts (a content item, a task): its search
    attributes, and the running workflow answering a retried create (the same
    ``Idempotency-Key`` gives the same id)."""
    return {
        "id": workflow_id,
        "task_queue": settings.temporal_task_queue,
        "id_conflict_policy": WorkflowIDConflictPolicy.USE_EXISTING,
        "static_summary": summary,
        "search_attributes": TypedSearchAttributes(
            [
                SearchAttributePair(TENANT_ID, str(tenant_id)),
                SearchAttributePair(BIZ_PROCESS, process),
                SearchAttributePair(BIZ_STATUS, status),
            ]
        ),
    }
