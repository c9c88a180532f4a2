"""The worker's start-up check of the namespace's search attributes, on the real dev server."""

from __future__ import annotations

import uuid

import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from core import search
from core.errors import Fatal
from workers.main import ensure_search_attributes

KEYWORD = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD


async def _fresh_namespace(env: WorkflowEnvironment) -> Client:
    """A new namespace on the dev server, without the project's search attributes."""
    name = f"ns-{uuid.uuid4().hex[:10]}"
    await env.client.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=name, workflow_execution_retention_period=Duration(seconds=86400)
        )
    )
    config = env.client.config()
    config["namespace"] = name
    return Client(**config)


async def _custom_attributes(client: Client) -> dict[str, int]:
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    return dict(listed.custom_attributes)


async def test_missing_attributes_are_registered_on_a_self_hosted_server(
    temporal_env: WorkflowEnvironment,
) -> None:
    client = await _fresh_namespace(temporal_env)
    assert not {key.name for key in search.ALL} & set(await _custom_attributes(client))

    registered = await ensure_search_attributes(client, may_register=True)

    assert registered == ["TenantId", "BizProcess", "BizStatus", "SlaDeadline"]
    attributes = await _custom_attributes(client)
    assert {key.name: attributes[key.name] for key in search.ALL} == {
        "TenantId": KEYWORD,
        "BizProcess": KEYWORD,
        "BizStatus": KEYWORD,
        "SlaDeadline": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    }
    # A second worker finds them and registers nothing.
    assert await ensure_search_attributes(client, may_register=True) == []


async def test_only_the_missing_ones_are_registered(temporal_env: WorkflowEnvironment) -> None:
    client = await _fresh_namespace(temporal_env)
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace, search_attributes={"TenantId": KEYWORD}
        )
    )
    assert await ensure_search_attributes(client, may_register=True) == [
        "BizProcess",
        "BizStatus",
        "SlaDeadline",
    ]


async def test_temporal_cloud_names_what_to_create(temporal_env: WorkflowEnvironment) -> None:
    client = await _fresh_namespace(temporal_env)
    with pytest.raises(Fatal) as raised:
        await ensure_search_attributes(client, may_register=False)
    assert str(raised.value) == (
        "create the search attributes TenantId (Keyword), BizProcess (Keyword), "
        f"BizStatus (Keyword), SlaDeadline (Datetime) in namespace {client.namespace!r} "
        "(Temporal Cloud: tcld namespace search-attributes add, or the Cloud UI)"
    )
    assert not {key.name for key in search.ALL} & set(await _custom_attributes(client))


async def test_a_server_that_refuses_registration_names_what_to_create(
    temporal_env: WorkflowEnvironment,
) -> None:
    # The dev server's SQLite visibility holds 10 custom Keyword attributes per namespace:
    # with them taken, it refuses ours, as a managed server refuses any.
    client = await _fresh_namespace(temporal_env)
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={f"Other{n}": KEYWORD for n in range(10)},
        )
    )
    with pytest.raises(Fatal) as raised:
        await ensure_search_attributes(client, may_register=True)
    message = str(raised.value)
    assert message.startswith(
        "create the search attributes TenantId (Keyword), BizProcess (Keyword), "
        f"BizStatus (Keyword), SlaDeadline (Datetime) in namespace {client.namespace!r}: "
        "the server refused to register"
    )
    assert "\n" not in message


async def test_an_attribute_of_the_wrong_type_is_reported(
    temporal_env: WorkflowEnvironment,
) -> None:
    client = await _fresh_namespace(temporal_env)
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={"BizStatus": IndexedValueType.INDEXED_VALUE_TYPE_TEXT},
        )
    )
    with pytest.raises(Fatal, match=r"BizStatus is INDEXED_VALUE_TYPE_TEXT, but must be Keyword"):
        await ensure_search_attributes(client, may_register=True)
