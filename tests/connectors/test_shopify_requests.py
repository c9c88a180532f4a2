"""The requests the Shopify connector sends to a store's Admin GraphQL API, in Shopify's shapes.

No peer and no private-URL allowance: the connector is opened as production opens it (the
guarded client, ``ConnectorContext()``, the store's myshopify.com URL) and respx answers at the
transport, so the exact method, URL, headers and GraphQL body are checked against Shopify's
documentation: the endpoint and ``X-Shopify-Access-Token``
(https://shopify.dev/docs/api/admin-graphql#endpoints,
https://shopify.dev/docs/apps/build/authentication-authorization/access-tokens), connection
paging with ``first``/``after`` (https://shopify.dev/docs/api/usage/pagination-graphql), the
``updated_at`` search filter (https://shopify.dev/docs/api/usage/search-syntax) and the cost
report in ``extensions`` (https://shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits).
The query documents are parsed with graphql-core, so the checks are on their structure (the
operation, its variables, the root field's arguments), not on their whitespace.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import respx
from graphql import FieldNode, OperationDefinitionNode, parse, print_ast

from connectors.commerce import SyncQuery
from connectors.commerce.shopify import LINE_ITEMS_PER_ORDER, MAX_ORDERS_PER_PAGE
from connectors.http import USER_AGENT, connector_client
from connectors.registry import ConnectorContext, open_commerce

SHOP = "https://bizosaas-demo.myshopify.com"
VERSION = "2025-07"
ENDPOINT = f"{SHOP}/admin/api/{VERSION}/graphql.json"
TOKEN = "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"  # Shopify's Admin API token format


def _cost(requested: float, actual: float, available: float) -> dict[str, Any]:
    """``extensions`` as every Admin GraphQL answer carries it."""
    return {
        "cost": {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": {
                "maximumAvailable": 2000.0,
                "currentlyAvailable": available,
                "restoreRate": 100.0,
            },
        }
    }


def _money(amount: str) -> dict[str, Any]:
    return {"shopMoney": {"amount": amount, "currencyCode": "EUR"}}


def _line_item(n: int) -> dict[str, Any]:
    return {
        "id": f"gid://shopify/LineItem/139801251{n:02d}",
        "name": f"Espresso beans 1 kg #{n}",
        "sku": "ESP-1KG",
        "quantity": 2,
        "originalUnitPriceSet": _money("15.0"),
        "discountedTotalSet": _money("30.0"),
        "product": {"id": "gid://shopify/Product/8123456789"},
        "variant": {"id": "gid://shopify/ProductVariant/44123456789"},
    }


def _order(
    number: int, updated_at: str, *, items: int = 1, more_items: str | None = None
) -> dict[str, Any]:
    """An ``Order`` node with the fields the connector selects (Shopify's documented types:
    ISO 8601 ``DateTime`` strings, ``MoneyBag`` with decimal-string amounts)."""
    return {
        "id": f"gid://shopify/Order/56472819{number}",
        "name": f"#{number}",
        "email": "ana.silva@example.com",
        "createdAt": "2026-11-29T09:04:11Z",
        "updatedAt": updated_at,
        "cancelledAt": None,
        "displayFinancialStatus": "PAID",
        "displayFulfillmentStatus": "UNFULFILLED",
        "currencyCode": "EUR",
        "totalPriceSet": _money("34.9"),
        "subtotalPriceSet": _money("30.0"),
        "customer": {"id": "gid://shopify/Customer/7012345678"},
        "lineItems": {
            "nodes": [_line_item(n) for n in range(items)],
            "pageInfo": {"hasNextPage": more_items is not None, "endCursor": more_items},
        },
    }


def _graphql_post(request: httpx.Request) -> dict[str, Any]:
    """The checks every call shares; returns the JSON body."""
    assert request.method == "POST"
    assert str(request.url) == ENDPOINT
    assert request.headers["x-shopify-access-token"] == TOKEN
    assert "authorization" not in request.headers
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == USER_AGENT
    body: dict[str, Any] = json.loads(request.content)
    assert set(body) == {"query", "variables"}
    return body


def _operation(document: str) -> tuple[str, dict[str, str], FieldNode]:
    """The one query operation of ``document``: its name, variable types and root field."""
    parsed = parse(document)
    [operation] = parsed.definitions
    assert isinstance(operation, OperationDefinitionNode)
    assert operation.operation.value == "query"
    assert operation.name is not None
    variables = {
        v.variable.name.value: print_ast(v.type) for v in operation.variable_definitions or ()
    }
    [root] = operation.selection_set.selections
    assert isinstance(root, FieldNode)
    return operation.name.value, variables, root


def _arguments(field: FieldNode) -> dict[str, str]:
    return {a.name.value: print_ast(a.value) for a in field.arguments or ()}


def _selected(field: FieldNode) -> dict[str, FieldNode]:
    assert field.selection_set is not None
    return {s.name.value: s for s in field.selection_set.selections if isinstance(s, FieldNode)}


async def test_an_incremental_order_listing_pages_by_cursor() -> None:
    """``updated_since`` becomes the ``updated_at:>=`` search filter in UTC with ``sortKey:
    UPDATED_AT``; the next page sends Shopify's ``endCursor`` as ``after`` with the same filter
    and page size."""
    since = datetime(2026, 11, 30, 9, 15, 30, tzinfo=timezone(timedelta(hours=2)))
    end_cursor = "eyJsYXN0X2lkIjo1NjQ3MjgxOTEwMDIsImxhc3RfdmFsdWUiOiIyMDI2LTExLTMwIn0="
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as vendor:
        graphql = vendor.post(ENDPOINT).mock(
            side_effect=[
                httpx.Response(
                    200,
                    json={
                        "data": {
                            "orders": {
                                "nodes": [
                                    _order(1001, "2026-11-30T07:15:30Z"),
                                    _order(1002, "2026-11-30T08:02:44Z"),
                                ],
                                "pageInfo": {"hasNextPage": True, "endCursor": end_cursor},
                            }
                        },
                        "extensions": _cost(922, 14, 1986),
                    },
                ),
                httpx.Response(
                    200,
                    json={
                        "data": {
                            "orders": {
                                "nodes": [_order(1003, "2026-11-30T09:40:00Z")],
                                "pageInfo": {"hasNextPage": False, "endCursor": "eyJsYXN0In0="},
                            }
                        },
                        "extensions": _cost(922, 8, 1978),
                    },
                ),
            ]
        )
        async with connector_client(allow_private=False) as http:
            shop = open_commerce(
                "shopify",
                {"store_url": SHOP, "api_version": VERSION},
                {"api_key": TOKEN},
                http,
                ConnectorContext(),
            )
            first = await shop.list_orders(SyncQuery(updated_since=since, limit=50))
            assert first.next_cursor is not None
            second = await shop.list_orders(SyncQuery(cursor=first.next_cursor))

    assert graphql.call_count == 2
    page_1, page_2 = (_graphql_post(call.request) for call in graphql.calls)
    search = "updated_at:>='2026-11-30T07:15:30+00:00'"
    # An order costs ~184 points: a page holds at most MAX_ORDERS_PER_PAGE of them.
    assert page_1["variables"] == {"first": MAX_ORDERS_PER_PAGE, "after": None, "query": search}
    assert page_2["variables"] == {
        "first": MAX_ORDERS_PER_PAGE,
        "after": end_cursor,
        "query": search,
    }
    assert page_2["query"] == page_1["query"]

    name, variables, root = _operation(page_1["query"])
    assert name == "Orders"
    assert variables == {"first": "Int!", "after": "String", "query": "String"}
    assert root.name.value == "orders"
    assert _arguments(root) == {
        "first": "$first",
        "after": "$after",
        "query": "$query",
        "sortKey": "UPDATED_AT",
    }
    connection = _selected(root)
    assert set(_selected(connection["pageInfo"])) == {"hasNextPage", "endCursor"}
    node = _selected(connection["nodes"])
    assert {"id", "name", "updatedAt", "totalPriceSet", "lineItems"} <= set(node)
    assert _arguments(node["lineItems"]) == {"first": str(LINE_ITEMS_PER_ORDER)}

    assert [o.number for o in first.items] == ["#1001", "#1002"]
    order = first.items[0]
    assert order.id == "gid://shopify/Order/564728191001"
    assert (order.status, order.vendor_status) == ("paid", "PAID/UNFULFILLED")
    assert (order.currency, order.total, order.subtotal) == ("EUR", Decimal("34.90"), Decimal(30))
    assert order.customer_id == "gid://shopify/Customer/7012345678"
    assert order.updated_at == datetime(2026, 11, 30, 7, 15, 30, tzinfo=UTC)
    item = order.line_items[0]
    assert (item.product_id, item.variant_id, item.sku) == (
        "gid://shopify/Product/8123456789",
        "gid://shopify/ProductVariant/44123456789",
        "ESP-1KG",
    )
    assert (item.quantity, item.unit_price, item.total) == (2, Decimal(15), Decimal(30))
    assert [o.number for o in second.items] == ["#1003"]
    assert second.next_cursor is None


async def test_an_order_with_more_line_items_fetches_the_rest_by_its_id() -> None:
    """An order read by its global id; line items beyond the first page come from a second
    query on the same order, continued from the items' ``endCursor``."""
    gid = "gid://shopify/Order/564728191004"
    items_cursor = "eyJsYXN0X2lkIjoxMzk4MDEyNTEyNH0="
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as vendor:
        graphql = vendor.post(ENDPOINT).mock(
            side_effect=[
                httpx.Response(
                    200,
                    json={
                        "data": {
                            "order": _order(
                                1004,
                                "2026-11-30T10:00:00Z",
                                items=LINE_ITEMS_PER_ORDER,
                                more_items=items_cursor,
                            )
                        },
                        "extensions": _cost(56, 29, 1944),
                    },
                ),
                httpx.Response(
                    200,
                    json={
                        "data": {
                            "order": {
                                "lineItems": {
                                    "nodes": [_line_item(n) for n in range(25, 28)],
                                    "pageInfo": {"hasNextPage": False, "endCursor": "eyJ4In0="},
                                }
                            }
                        },
                        "extensions": _cost(103, 6, 1938),
                    },
                ),
            ]
        )
        async with connector_client(allow_private=False) as http:
            shop = open_commerce(
                "shopify",
                {"store_url": SHOP, "api_version": VERSION},
                {"api_key": TOKEN},
                http,
                ConnectorContext(),
            )
            order = await shop.get_order(gid)

    read, rest = (_graphql_post(call.request) for call in graphql.calls)
    assert read["variables"] == {"id": gid}
    name, variables, root = _operation(read["query"])
    assert (name, variables, root.name.value) == ("Order", {"id": "ID!"}, "order")
    assert _arguments(root) == {"id": "$id"}

    assert rest["variables"] == {"id": gid, "after": items_cursor}
    name, variables, root = _operation(rest["query"])
    assert (name, variables, root.name.value) == (
        "LineItems",
        {"id": "ID!", "after": "String"},
        "order",
    )
    items = _selected(root)["lineItems"]
    assert _arguments(items) == {"first": "50", "after": "$after"}
    assert set(_selected(_selected(items)["pageInfo"])) == {"hasNextPage", "endCursor"}

    assert len(order.line_items) == LINE_ITEMS_PER_ORDER + 3
    assert order.line_items[-1].name == "Espresso beans 1 kg #27"


async def test_a_full_customer_listing_sends_no_search_filter() -> None:
    """Without ``updated_since`` the listing sends ``query: null`` (every customer), still
    sorted by ``UPDATED_AT`` so the sync's high-water mark comes last."""
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as vendor:
        graphql = vendor.post(ENDPOINT).respond(
            200,
            json={
                "data": {
                    "customers": {
                        "nodes": [
                            {
                                "id": "gid://shopify/Customer/7012345678",
                                "firstName": "Ana",
                                "lastName": "Silva",
                                "defaultEmailAddress": {"emailAddress": "ana.silva@example.com"},
                                "defaultPhoneNumber": {"phoneNumber": "+351210000000"},
                                # UnsignedInt64 is serialised as a string.
                                "numberOfOrders": "3",
                                "amountSpent": {"amount": "104.7", "currencyCode": "EUR"},
                                "createdAt": "2026-10-02T10:20:00Z",
                                "updatedAt": "2026-11-30T07:20:00Z",
                            },
                            {
                                "id": "gid://shopify/Customer/7012345679",
                                "firstName": None,
                                "lastName": "Buyer",
                                "defaultEmailAddress": None,
                                "defaultPhoneNumber": None,
                                "numberOfOrders": "0",
                                "amountSpent": {"amount": "0.0", "currencyCode": "EUR"},
                                "createdAt": "2026-11-30T08:00:00Z",
                                "updatedAt": "2026-11-30T08:00:00Z",
                            },
                        ],
                        "pageInfo": {"hasNextPage": False, "endCursor": "eyJsYXN0In0="},
                    }
                },
                "extensions": _cost(102, 4, 1996),
            },
        )
        async with connector_client(allow_private=False) as http:
            shop = open_commerce(
                "shopify",
                {"store_url": SHOP},  # the default API version
                {"api_key": TOKEN},
                http,
                ConnectorContext(),
            )
            page = await shop.list_customers(SyncQuery(limit=50))

    sent = _graphql_post(graphql.calls.last.request)
    assert sent["variables"] == {"first": 50, "after": None, "query": None}
    name, variables, root = _operation(sent["query"])
    assert (name, root.name.value) == ("Customers", "customers")
    assert variables == {"first": "Int!", "after": "String", "query": "String"}
    assert _arguments(root)["sortKey"] == "UPDATED_AT"

    ana, buyer = page.items
    assert (ana.email, ana.phone, ana.orders_count) == (
        "ana.silva@example.com",
        "+351210000000",
        3,
    )
    assert (ana.total_spent, ana.currency) == (Decimal("104.70"), "EUR")
    assert (buyer.email, buyer.first_name, buyer.orders_count) == (None, None, 0)
    assert page.next_cursor is None
