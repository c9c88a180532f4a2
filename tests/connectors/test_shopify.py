"""The Shopify connector against the Shopify peer (tests/peers/shopify.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from connectors.commerce import CommercePort, SyncQuery
from connectors.commerce.shopify import (
    LINE_ITEMS_PER_ORDER,
    MAX_ORDERS_PER_PAGE,
    MAX_PACING_WAIT,
    QUERIES,
)
from connectors.http import (
    AuthFailed,
    RateLimited,
    ResponseTooLarge,
    SchemaMismatch,
    UnsafeURL,
    VendorNotFound,
    VendorUnavailable,
    as_application_error,
    connector_client,
)
from connectors.registry import ConnectorContext, open_commerce
from tests.peers.shopify import ACCESS_TOKEN, Fault, ShopifyPeer, query_cost

pytest_plugins = ["tests.peers.shopify"]

T0 = datetime(2026, 2, 1, 9, 30, tzinfo=UTC)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with connector_client(allow_private=True) as client:
        yield client


def _open(
    peer: ShopifyPeer,
    http: httpx.AsyncClient,
    *,
    token: str = ACCESS_TOKEN,
    max_bytes: int = 8 * 1024 * 1024,
) -> CommercePort:
    return open_commerce(
        "shopify",
        {"store_url": peer.url},
        {"api_key": token},
        http,
        ConnectorContext(allow_private_urls=True, max_response_bytes=max_bytes),
    )


@pytest.fixture
def shop(shopify_peer: ShopifyPeer, http: httpx.AsyncClient) -> CommercePort:
    return _open(shopify_peer, http)


async def test_verify_names_the_shop(shop: CommercePort) -> None:
    account = await shop.verify()
    assert account.account_id == "gid://shopify/Shop/1"
    assert account.detail["domain"] == "peer-shop.myshopify.com"


async def test_wrong_token_is_auth_failed(
    shopify_peer: ShopifyPeer, http: httpx.AsyncClient
) -> None:
    shop = _open(shopify_peer, http, token="shpat_wrong")
    with pytest.raises(AuthFailed) as caught:
        await shop.verify()
    assert caught.value.status == 401
    assert "Invalid API key or access token" in str(caught.value)
    assert "shpat_wrong" not in str(caught.value)
    assert as_application_error(caught.value).non_retryable


async def test_missing_scope_is_auth_failed(shopify_peer: ShopifyPeer, shop: CommercePort) -> None:
    shopify_peer.scopes.discard("read_orders")
    with pytest.raises(AuthFailed, match="read_orders"):
        await shop.list_orders(SyncQuery())


async def test_customers_page_by_cursor_and_updated_since(
    shopify_peer: ShopifyPeer, shop: CommercePort
) -> None:
    made = [
        shopify_peer.add_customer(f"c{i}@example.com", updated=T0 + timedelta(minutes=i), orders=i)
        for i in range(5)
    ]
    seen: list[str] = []
    query = SyncQuery(limit=2)
    while True:
        page = await shop.list_customers(query)
        seen.extend(c.id for c in page.items)
        if page.next_cursor is None:
            break
        query = SyncQuery(cursor=page.next_cursor)
    assert seen == [c["id"] for c in made]  # sorted by updatedAt
    assert len(shopify_peer.queries) == 3

    recent = await shop.list_customers(SyncQuery(updated_since=T0 + timedelta(minutes=3)))
    assert [c.email for c in recent.items] == ["c3@example.com", "c4@example.com"]
    customer = recent.items[0]
    assert customer.orders_count == 3
    assert customer.total_spent == Decimal("120.50")
    assert customer.currency == "EUR"
    assert customer.updated_at == T0 + timedelta(minutes=3)
    assert (await shop.get_customer(customer.id)).email == "c3@example.com"


async def test_orders_with_more_line_items_than_a_page_carries(
    shopify_peer: ShopifyPeer, shop: CommercePort
) -> None:
    shopify_peer.set_bucket(maximum=2000, restore_rate=1000)  # Shopify Plus: no waiting here
    product = shopify_peer.add_product("Mug", updated=T0)
    big = shopify_peer.add_order(
        updated=T0, line_items=LINE_ITEMS_PER_ORDER + 7, product={"id": product["id"]}
    )
    refunded = shopify_peer.add_order(updated=T0 + timedelta(hours=1), financial="REFUNDED")
    shipped = shopify_peer.add_order(updated=T0 + timedelta(hours=2), fulfillment="FULFILLED")
    page = await shop.list_orders(SyncQuery())
    assert [o.id for o in page.items] == [big["id"], refunded["id"], shipped["id"]]
    order = page.items[0]
    assert len(order.line_items) == LINE_ITEMS_PER_ORDER + 7
    assert order.line_items[0].product_id == product["id"]
    assert order.line_items[0].unit_price == Decimal("10.00")
    assert order.total == Decimal(9 * (LINE_ITEMS_PER_ORDER + 7))
    assert [o.status for o in page.items] == ["paid", "refunded", "fulfilled"]
    assert (await shop.get_order(shipped["id"])).number == shipped["name"]


async def test_order_pages_stay_under_the_single_query_limit() -> None:
    # The peer computes Shopify's requested cost; a page of orders must stay below 1000.
    from graphql import OperationDefinitionNode, build_schema, parse

    from tests.peers.shopify import SCHEMA

    schema = build_schema(SCHEMA)
    for name in QUERIES:
        [operation] = parse(QUERIES[name]).definitions
        assert isinstance(operation, OperationDefinitionNode)
        variables = {"first": MAX_ORDERS_PER_PAGE if name == "orders" else 100}
        assert query_cost(schema, operation, variables) <= 1000, name


async def test_products(shopify_peer: ShopifyPeer, shop: CommercePort) -> None:
    made = shopify_peer.add_product("Tea Pot", updated=T0, price="35.00")
    page = await shop.list_products(SyncQuery())
    [product] = page.items
    assert (product.id, product.title, product.slug) == (made["id"], "Tea Pot", "tea-pot")
    assert (product.price, product.currency, product.sku) == (
        Decimal("35.00"),
        "EUR",
        "SKU-tea-pot",
    )
    assert product.status == "active"


async def test_unknown_and_malformed_ids_are_not_found(shop: CommercePort) -> None:
    with pytest.raises(VendorNotFound):
        await shop.get_product("gid://shopify/Product/424242")
    with pytest.raises(VendorNotFound):
        await shop.get_product("42")


async def test_the_connector_paces_itself_by_the_reported_cost(
    shopify_peer: ShopifyPeer, shop: CommercePort
) -> None:
    for i in range(30):
        shopify_peer.add_customer(f"c{i}@example.com", updated=T0 + timedelta(seconds=i))
    # A small bucket: each page of 10 customers costs 43 points; four pages need 172.
    shopify_peer.set_bucket(maximum=100, restore_rate=100)
    query = SyncQuery(limit=10)
    pages = 0
    while True:
        page = await shop.list_customers(query)
        pages += 1
        if page.next_cursor is None:
            break
        query = SyncQuery(cursor=page.next_cursor)
    assert pages == 3
    assert shopify_peer.throttled == 0


async def test_a_throttled_query_waits_for_a_short_refill_once(
    shopify_peer: ShopifyPeer, shop: CommercePort
) -> None:
    shopify_peer.add_customer("c@example.com", updated=T0)
    # 203 points at 100 a second: ~2 s to refill, longer than any scheduling delay between
    # the drain and the query, well within the connector's own wait.
    shopify_peer.set_bucket(maximum=250, restore_rate=100)
    shopify_peer.drain()
    page = await shop.list_customers(SyncQuery(limit=50))
    assert [c.email for c in page.items] == ["c@example.com"]
    assert shopify_peer.throttled == 1


async def test_throttled_query_is_rate_limited_with_the_refill_time(
    shopify_peer: ShopifyPeer, shop: CommercePort
) -> None:
    shopify_peer.set_bucket(maximum=100, restore_rate=2)
    shopify_peer.drain()
    with pytest.raises(RateLimited) as caught:
        await shop.list_customers(SyncQuery(limit=10))
    assert shopify_peer.throttled == 1
    # 43 points at 2 a second, less what refilled before the peer answered.
    assert caught.value.retry_after is not None
    assert 15 < caught.value.retry_after <= 21.5
    error = as_application_error(caught.value)
    assert not error.non_retryable
    assert error.next_retry_delay is not None


async def test_a_long_refill_is_left_to_the_retry_policy(
    shopify_peer: ShopifyPeer, shop: CommercePort
) -> None:
    shopify_peer.set_bucket(maximum=100, restore_rate=2)
    await shop.list_customers(SyncQuery(limit=10))  # 43 of 100
    await shop.list_customers(SyncQuery(limit=10))  # 86 of 100
    # The third needs 43 with ~14 left: ~15 s at 2 points a second. No call is made.
    with pytest.raises(RateLimited) as caught:
        await shop.list_customers(SyncQuery(limit=10))
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > MAX_PACING_WAIT
    assert len(shopify_peer.queries) == 2
    assert shopify_peer.throttled == 0


async def test_http_429_from_the_edge_carries_retry_after(
    shopify_peer: ShopifyPeer, shop: CommercePort
) -> None:
    shopify_peer.fail(Fault(429, {"errors": "Exceeded 2 calls per second"}, {"Retry-After": "2.0"}))
    with pytest.raises(RateLimited) as caught:
        await shop.list_products(SyncQuery())
    assert caught.value.retry_after == 2.0
    assert "Exceeded 2 calls per second" in str(caught.value)


async def test_5xx_is_retryable(shopify_peer: ShopifyPeer, shop: CommercePort) -> None:
    shopify_peer.fail(Fault(503, {"errors": "Service Unavailable"}))
    with pytest.raises(VendorUnavailable) as caught:
        await shop.list_orders(SyncQuery())
    assert caught.value.status == 503
    assert caught.value.retryable


async def test_a_field_gone_in_this_version_is_a_schema_mismatch(
    shopify_peer: ShopifyPeer, shop: CommercePort
) -> None:
    shopify_peer.remove_field("Customer.defaultEmailAddress")
    with pytest.raises(SchemaMismatch) as caught:
        await shop.list_customers(SyncQuery())
    assert caught.value.field == "Customer.defaultEmailAddress"
    assert as_application_error(caught.value).non_retryable


async def test_a_malformed_answer_names_the_field(
    shopify_peer: ShopifyPeer, shop: CommercePort
) -> None:
    shopify_peer.fail(
        Fault(
            200,
            {
                "data": {
                    "customers": {
                        "nodes": [{"id": "gid://shopify/Customer/1", "updatedAt": "soon"}],
                        "pageInfo": {"hasNextPage": False, "endCursor": None},
                    }
                }
            },
        )
    )
    with pytest.raises(SchemaMismatch) as caught:
        await shop.list_customers(SyncQuery())
    assert caught.value.field == "$.data.customers.nodes[0].createdAt"


async def test_huge_answer_is_refused(shopify_peer: ShopifyPeer, http: httpx.AsyncClient) -> None:
    for i in range(60):
        shopify_peer.add_customer(f"customer-{i:03d}@example.com", updated=T0)
    shop = _open(shopify_peer, http, max_bytes=8 * 1024)
    with pytest.raises(ResponseTooLarge):
        await shop.list_customers(SyncQuery(limit=50))


async def test_loopback_store_refused_by_the_guarded_client(shopify_peer: ShopifyPeer) -> None:
    async with connector_client(allow_private=False) as guarded:
        with pytest.raises(UnsafeURL):
            open_commerce(
                "shopify", {"store_url": shopify_peer.url}, {"api_key": ACCESS_TOKEN}, guarded
            )
        port = shopify_peer.url.rsplit(":", 1)[1]
        shop = open_commerce(
            "shopify",
            {"store_url": f"https://localhost:{port}"},
            {"api_key": ACCESS_TOKEN},
            guarded,
            ConnectorContext(allow_private_urls=True),
        )
        with pytest.raises(UnsafeURL):
            await shop.verify()
    assert shopify_peer.queries == []
