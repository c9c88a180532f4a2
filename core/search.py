"""The project's search attributes, declared once.

Operators find workflows in the Temporal UI by these. They never hold personal data.
"""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

TENANT_ID = SearchAttributeKey.for_keyword("TenantId")
BIZ_PROCESS = SearchAttributeKey.for_keyword("BizProcess")
BIZ_STATUS = SearchAttributeKey.for_keyword("BizStatus")

ALL: tuple[SearchAttributeKey[str], ...] = (TENANT_ID, BIZ_PROCESS, BIZ_STATUS)


def cli_flags() -> list[str]:
    """``--search-attribute Name=Keyword`` flags for ``temporal server start-dev``."""
    flags: list[str] = []
    for key in ALL:
        flags += ["--search-attribute", f"{key.name}=Keyword"]
    return flags


async def register(client: Client) -> None:
    """Register the attributes through the operator service (servers without a CLI flag)."""
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={
                key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for key in ALL
            },
        )
    )
