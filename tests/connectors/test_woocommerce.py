"""The WooCommerce connector against the WooCommerce peer (tests/peers/woocommerce.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from connectors.commerce import CommercePort, Customer, SyncQuery
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
from connectors.ports import Page
from connectors.registry import ConnectorContext, open_commerce
from tests.peers.woocommerce import CONSUMER_KEY, CONSUMER_SECRET, Fault, WooCommercePeer

pytest_plugins = ["tests.peers.woocommerce"]

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with connector_client(allow_private=True) as client:
        yield client


def _open(
    peer: WooCommercePeer,
    http: httpx.AsyncClient,
    *,
    key: str = CONSUMER_KEY,
    secret: str = CONSUMER_SECRET,
    max_bytes: int = 8 * 1024 * 1024,
) -> CommercePort:
    return open_commerce(
        "woocommerce",
        {"store_url": peer.url},
        {"api_key": key, "api_secret": secret},
        http,
        ConnectorContext(allow_private_urls=True, max_response_bytes=max_bytes),
    )


@pytest.fixture
def shop(woocommerce_peer: WooCommercePeer, http: httpx.AsyncClient) -> CommercePort:
    return _open(woocommerce_peer, http)


async def test_verify_names_the_store(shop: CommercePort) -> None:
    account = await shop.verify()
    assert account.name == "Peer Shop"
    assert await shop.revoke() is False


@pytest.mark.parametrize(
    ("key", "secret", "reason"),
    [
        ("ck_unknown", CONSUMER_SECRET, "Consumer key is invalid."),
        (CONSUMER_KEY, "cs_wrong", "Consumer secret is invalid."),
    ],
)
async def test_wrong_keys_are_auth_failed_with_the_vendor_reason(
    woocommerce_peer: WooCommercePeer, http: httpx.AsyncClient, key: str, secret: str, reason: str
) -> None:
    shop = _open(woocommerce_peer, http, key=key, secret=secret)
    with pytest.raises(AuthFailed) as caught:
        await shop.verify()
    assert reason in str(caught.value)
    assert secret not in str(caught.value)
    assert as_application_error(caught.value).non_retryable


async def _all_customers(shop: CommercePort, query: SyncQuery) -> list[Customer]:
    found: list[Customer] = []
    while True:
        page: Page[Customer] = await shop.list_customers(query)
        found.extend(page.items)
        if page.next_cursor is None:
            return found
        query = SyncQuery(cursor=page.next_cursor)


async def test_customers_page_through_x_wp_totalpages(
    woocommerce_peer: WooCommercePeer, shop: CommercePort
) -> None:
    made = [
        woocommerce_peer.add_customer(f"c{i}@example.com", modified=T0 + timedelta(hours=i))
        for i in range(7)
    ]
    customers = await _all_customers(shop, SyncQuery(limit=3))
    assert [c.email for c in customers] == [r["email"] for r in made]  # by id, oldest first
    pages = [q for path, q in woocommerce_peer.requests if path.endswith("/customers")]
    assert [q["page"] for q in pages] == ["1", "2", "3"]
    assert customers[0].phone == "+44 20 7946 0000"
    assert customers[0].updated_at == T0
    assert (await shop.get_customer(customers[1].id)).email == "c1@example.com"


async def test_customers_updated_since_are_filtered_here(
    woocommerce_peer: WooCommercePeer, shop: CommercePort
) -> None:
    for i in range(5):
        woocommerce_peer.add_customer(f"c{i}@example.com", modified=T0 + timedelta(hours=i))
    recent = await _all_customers(shop, SyncQuery(limit=2, updated_since=T0 + timedelta(hours=3)))
    assert [c.email for c in recent] == ["c3@example.com", "c4@example.com"]


async def test_orders_incremental_sync_with_modified_after(
    woocommerce_peer: WooCommercePeer, shop: CommercePort
) -> None:
    customer = woocommerce_peer.add_customer("buyer@example.com", modified=T0)
    old = woocommerce_peer.add_order(modified=T0, items=[("mug", 1, "8.50")])
    new = woocommerce_peer.add_order(
        modified=T0 + timedelta(days=1),
        status="completed",
        customer_id=customer["id"],
        items=[("mug", 2, "8.50"), ("tea", 1, "4.00")],
    )
    page = await shop.list_orders(SyncQuery(updated_since=T0 + timedelta(hours=1)))
    assert [o.id for o in page.items] == [str(new["id"])]
    order = page.items[0]
    assert order.status == "fulfilled"
    assert order.vendor_status == "completed"
    assert order.total == Decimal("21.00")
    assert order.customer_id == str(customer["id"])
    assert [(i.name, i.quantity, i.unit_price) for i in order.line_items] == [
        ("mug", 2, Decimal("8.5")),
        ("tea", 1, Decimal("4")),
    ]
    [(_, params)] = [r for r in woocommerce_peer.requests if r[0].endswith("/orders")]
    assert params["dates_are_gmt"] == "true"
    everything = await shop.list_orders(SyncQuery())
    assert {o.id for o in everything.items} == {str(old["id"]), str(new["id"])}
    assert (await shop.get_order(str(old["id"]))).status == "paid"


async def test_products(woocommerce_peer: WooCommercePeer, shop: CommercePort) -> None:
    woocommerce_peer.add_product("Mug", modified=T0, price="8.50")
    woocommerce_peer.add_product("Draft", modified=T0, status="draft", price="")
    page = await shop.list_products(SyncQuery())
    assert [(p.title, p.status, p.price) for p in page.items] == [
        ("Mug", "active", Decimal("8.50")),
        ("Draft", "draft", None),
    ]
    assert page.items[0].sku == "SKU-MUG"


async def test_unknown_record_is_not_found(shop: CommercePort) -> None:
    with pytest.raises(VendorNotFound) as caught:
        await shop.get_order("999")
    assert caught.value.code == "woocommerce_rest_shop_order_invalid_id"


async def test_429_carries_retry_after(
    woocommerce_peer: WooCommercePeer, shop: CommercePort
) -> None:
    woocommerce_peer.fail(
        Fault(status=429, body={"message": "Too Many Requests"}, headers={"Retry-After": "12"})
    )
    with pytest.raises(RateLimited) as caught:
        await shop.list_products(SyncQuery())
    assert caught.value.retry_after == 12
    delay = as_application_error(caught.value).next_retry_delay
    assert delay is not None
    assert delay.total_seconds() == 12
    await shop.list_products(SyncQuery())  # the next attempt goes through


async def test_5xx_is_retryable(woocommerce_peer: WooCommercePeer, shop: CommercePort) -> None:
    woocommerce_peer.fail(
        Fault(status=502, body={"code": "bad_gateway", "message": "Upstream down"})
    )
    with pytest.raises(VendorUnavailable) as caught:
        await shop.list_orders(SyncQuery())
    assert caught.value.status == 502
    assert "Upstream down" in str(caught.value)
    assert not as_application_error(caught.value).non_retryable


async def test_schema_mismatch_names_the_field(
    woocommerce_peer: WooCommercePeer, shop: CommercePort
) -> None:
    woocommerce_peer.add_order(modified=T0)
    woocommerce_peer.add_order(modified=T0)
    woocommerce_peer.fail(Fault(drop_field="total"))
    with pytest.raises(SchemaMismatch) as caught:
        await shop.list_orders(SyncQuery())
    assert caught.value.field == "$[0].total"


async def test_missing_page_count_is_a_schema_mismatch(
    woocommerce_peer: WooCommercePeer, shop: CommercePort
) -> None:
    # A caching proxy that strips headers breaks pagination: say so instead of stopping early.
    woocommerce_peer.fail(Fault(status=200, body=[], headers={}))
    with pytest.raises(SchemaMismatch) as caught:
        await shop.list_products(SyncQuery())
    assert caught.value.field == "headers.X-WP-TotalPages"


async def test_huge_page_is_refused(
    woocommerce_peer: WooCommercePeer, http: httpx.AsyncClient
) -> None:
    for i in range(10):
        woocommerce_peer.add_product(f"P{i}", modified=T0, description="<p>" + "y" * 60_000)
    shop = _open(woocommerce_peer, http, max_bytes=256 * 1024)
    with pytest.raises(ResponseTooLarge):
        await shop.list_products(SyncQuery(limit=10))
    assert len((await shop.list_products(SyncQuery(limit=3))).items) == 3


async def test_private_store_urls_are_refused_in_production(
    woocommerce_peer: WooCommercePeer,
) -> None:
    async with connector_client(allow_private=False) as guarded:
        with pytest.raises(UnsafeURL):
            open_commerce(
                "woocommerce",
                {"store_url": woocommerce_peer.url},
                {"api_key": CONSUMER_KEY, "api_secret": CONSUMER_SECRET},
                guarded,
                ConnectorContext(),
            )
        for url in ("http://shop.example.com", "https://10.0.0.5", "https://[::1]:8443"):
            with pytest.raises(UnsafeURL):
                open_commerce(
                    "woocommerce",
                    {"store_url": url},
                    {"api_key": CONSUMER_KEY, "api_secret": CONSUMER_SECRET},
                    guarded,
                    ConnectorContext(),
                )
