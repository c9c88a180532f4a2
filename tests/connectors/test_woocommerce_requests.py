"""The requests the WooCommerce connector sends to a store on the internet, in WooCommerce's shapes.

No peer and no private-URL allowance: the connector is opened as production opens it (the
guarded client, ``ConnectorContext()``, an https store URL) and respx answers at the transport,
so the exact method, URL, query and headers are checked against the REST API documentation
(https://woocommerce.github.io/woocommerce-rest-api-docs/: #authentication-over-https,
#pagination, #list-all-orders, #list-all-products, #list-all-customers). The answers are shaped
like the documented examples, fields the connector does not read included.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import respx

from connectors.commerce import SyncQuery
from connectors.http import USER_AGENT, connector_client
from connectors.registry import ConnectorContext, open_commerce

STORE = "https://shop.example.com"
# WooCommerce's key format: ck_/cs_ and 40 hex digits.
CONSUMER_KEY = "ck_4f1b2c3d4e5f60718293a4b5c6d7e8f901234567"
CONSUMER_SECRET = "cs_0a1b2c3d4e5f60718293a4b5c6d7e8f9abcdef01"
BASIC = "Basic " + base64.b64encode(f"{CONSUMER_KEY}:{CONSUMER_SECRET}".encode()).decode()


def _order(order_id: int, modified_gmt: str, status: str = "processing") -> dict[str, Any]:
    """An order as ``GET /wc/v3/orders`` lists it (the documented order properties)."""
    return {
        "id": order_id,
        "parent_id": 0,
        "number": str(order_id),
        "order_key": f"wc_order_{order_id:013d}",
        "created_via": "checkout",
        "version": "9.4.2",
        "status": status,
        "currency": "EUR",
        "date_created": "2026-11-29T10:04:11",
        "date_created_gmt": "2026-11-29T09:04:11",
        # The store runs at UTC+1; the connector reads only the _gmt fields.
        "date_modified": (datetime.fromisoformat(modified_gmt) + timedelta(hours=1)).isoformat(),
        "date_modified_gmt": modified_gmt,
        "discount_total": "0.00",
        "discount_tax": "0.00",
        "shipping_total": "4.90",
        "shipping_tax": "0.00",
        "cart_tax": "0.00",
        "total": "34.90",
        "total_tax": "0.00",
        "prices_include_tax": True,
        "customer_id": 17,
        "customer_ip_address": "",
        "customer_user_agent": "",
        "customer_note": "",
        "billing": {
            "first_name": "Ana",
            "last_name": "Silva",
            "company": "",
            "address_1": "Rua Augusta 1",
            "address_2": "",
            "city": "Lisboa",
            "state": "",
            "postcode": "1100-048",
            "country": "PT",
            "email": "ana.silva@example.com",
            "phone": "+351 21 000 0000",
        },
        "shipping": {"first_name": "Ana", "last_name": "Silva", "country": "PT"},
        "payment_method": "stripe",
        "payment_method_title": "Credit card",
        "transaction_id": "pi_3Q",
        "date_paid": "2026-11-29T10:04:15",
        "date_paid_gmt": "2026-11-29T09:04:15",
        "date_completed": None,
        "date_completed_gmt": None,
        "cart_hash": "",
        "meta_data": [],
        "line_items": [
            {
                "id": order_id * 10,
                "name": "Espresso beans 1 kg",
                "product_id": 93,
                "variation_id": 0,
                "quantity": 2,
                "tax_class": "",
                "subtotal": "30.00",
                "subtotal_tax": "0.00",
                "total": "30.00",
                "total_tax": "0.00",
                "taxes": [],
                "meta_data": [],
                "sku": "ESP-1KG",
                "price": 15,  # a number, not a string, in WooCommerce's answer
            }
        ],
        "tax_lines": [],
        "shipping_lines": [],
        "fee_lines": [],
        "coupon_lines": [],
        "refunds": [],
        "_links": {"self": [{"href": f"{STORE}/wp-json/wc/v3/orders/{order_id}"}]},
    }


def _paged(
    body: list[dict[str, Any]], *, route: str, page: int, total: int, pages: int
) -> httpx.Response:
    """A collection answer with WooCommerce's paging headers (#pagination)."""
    links = []
    if page < pages:
        links.append(f'<{STORE}/wp-json/wc/v3/{route}?page={page + 1}>; rel="next"')
    if page > 1:
        links.append(f'<{STORE}/wp-json/wc/v3/{route}?page={page - 1}>; rel="prev"')
    headers = {"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)}
    if links:
        headers["Link"] = ", ".join(links)
    return httpx.Response(200, json=body, headers=headers)


def _assert_authenticated_get(request: httpx.Request, path: str) -> None:
    """HTTP Basic with the consumer key and secret, over https, with nothing in the URL."""
    assert request.method == "GET"
    assert request.url.scheme == "https"
    assert request.url.host == "shop.example.com"
    assert request.url.path == f"/wp-json/wc/v3/{path}"
    assert request.headers["authorization"] == BASIC
    assert request.headers["user-agent"] == USER_AGENT
    # The query-string form of the keys is for servers that drop the Authorization header;
    # the keys must never travel in a URL that proxies and access logs keep.
    assert "consumer_key" not in request.url.params
    assert "consumer_secret" not in request.url.params
    assert CONSUMER_KEY not in str(request.url)
    assert request.content == b""


def _params(request: httpx.Request) -> list[tuple[str, str]]:
    """Every query parameter, repeated ones included, in a stable order."""
    return sorted(request.url.params.multi_items())


async def test_an_incremental_order_listing_pages_with_basic_auth() -> None:
    """``updated_since`` becomes ``modified_after`` in GMT, paged by ``page``/``per_page`` in id
    order; the cursor of page 1 asks for page 2 with the same filter."""
    # 09:15:30.25 at UTC+2 is 07:15:30 GMT; modified_after is strict and to the second, so
    # the connector asks from one second earlier to keep "at or after".
    since = datetime(2026, 11, 30, 9, 15, 30, 250_000, tzinfo=timezone(timedelta(hours=2)))
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as vendor:
        orders = vendor.get(f"{STORE}/wp-json/wc/v3/orders").mock(
            side_effect=[
                _paged(
                    [_order(727, "2026-11-30T07:15:30"), _order(731, "2026-11-30T08:02:44")],
                    route="orders",
                    page=1,
                    total=3,
                    pages=2,
                ),
                _paged(
                    [_order(740, "2026-11-30T09:40:00", status="completed")],
                    route="orders",
                    page=2,
                    total=3,
                    pages=2,
                ),
            ]
        )
        async with connector_client(allow_private=False) as http:
            shop = open_commerce(
                "woocommerce",
                {"store_url": STORE},
                {"api_key": CONSUMER_KEY, "api_secret": CONSUMER_SECRET},
                http,
                ConnectorContext(),
            )
            first = await shop.list_orders(SyncQuery(updated_since=since, limit=2))
            assert first.next_cursor is not None
            second = await shop.list_orders(SyncQuery(cursor=first.next_cursor))

    assert orders.call_count == 2
    filters = [
        ("dates_are_gmt", "true"),
        ("modified_after", "2026-11-30T07:15:29"),
        ("order", "asc"),
        ("orderby", "id"),
    ]
    page_1, page_2 = (call.request for call in orders.calls)
    _assert_authenticated_get(page_1, "orders")
    assert _params(page_1) == sorted([*filters, ("page", "1"), ("per_page", "2")])
    _assert_authenticated_get(page_2, "orders")
    assert _params(page_2) == sorted([*filters, ("page", "2"), ("per_page", "2")])

    assert [o.id for o in first.items] == ["727", "731"]
    order = first.items[0]
    assert order.number == "727"
    assert (order.status, order.vendor_status) == ("paid", "processing")
    assert (order.currency, order.total, order.subtotal) == ("EUR", Decimal("34.90"), Decimal(30))
    assert (order.customer_id, order.email) == ("17", "ana.silva@example.com")
    assert order.updated_at == datetime(2026, 11, 30, 7, 15, 30, tzinfo=UTC)
    assert order.created_at == datetime(2026, 11, 29, 9, 4, 11, tzinfo=UTC)
    item = order.line_items[0]
    assert (item.id, item.product_id, item.variant_id, item.sku) == ("7270", "93", None, "ESP-1KG")
    assert (item.quantity, item.unit_price, item.total) == (2, Decimal(15), Decimal(30))
    assert [(o.id, o.status) for o in second.items] == [("740", "fulfilled")]
    assert second.next_cursor is None


async def test_customer_and_product_listings_send_their_documented_parameters() -> None:
    """Customers have no ``modified_after`` (the connector filters them itself); products ask
    for every status; per_page never exceeds WooCommerce's 100."""
    since = datetime(2026, 11, 1, tzinfo=UTC)
    customers_body = [
        {
            "id": 25,
            "date_created": "2026-10-02T11:20:00",
            "date_created_gmt": "2026-10-02T10:20:00",
            "date_modified": "2026-10-03T09:00:00",
            "date_modified_gmt": "2026-10-03T08:00:00",  # before the sync point: left out
            "email": "old.buyer@example.com",
            "first_name": "Old",
            "last_name": "Buyer",
            "role": "customer",
            "username": "old.buyer",
            "billing": {"email": "old.buyer@example.com", "phone": ""},
            "shipping": {"country": "DE"},
            "is_paying_customer": True,
            "avatar_url": "https://secure.gravatar.com/avatar/x?s=96&d=mm&r=g",
            "meta_data": [],
        },
        {
            "id": 26,
            "date_created": "2026-11-20T15:00:00",
            "date_created_gmt": "2026-11-20T14:00:00",
            "date_modified": "2026-11-21T15:30:00",
            "date_modified_gmt": "2026-11-21T14:30:00",
            "email": "new.buyer@example.com",
            "first_name": "New",
            "last_name": "Buyer",
            "role": "customer",
            "username": "new.buyer",
            "billing": {"email": "new.buyer@example.com", "phone": "+49 30 000000"},
            "shipping": {"country": "DE"},
            "is_paying_customer": False,
            "avatar_url": "https://secure.gravatar.com/avatar/y?s=96&d=mm&r=g",
            "meta_data": [],
        },
    ]
    products_body = [
        {
            "id": 93,
            "name": "Espresso beans 1 kg",
            "slug": "espresso-beans-1-kg",
            "permalink": f"{STORE}/product/espresso-beans-1-kg/",
            "date_created": "2026-01-10T09:00:00",
            "date_created_gmt": "2026-01-10T08:00:00",
            "date_modified": "2026-11-28T12:00:00",
            "date_modified_gmt": "2026-11-28T11:00:00",
            "type": "simple",
            "status": "publish",
            "featured": False,
            "catalog_visibility": "visible",
            "sku": "ESP-1KG",
            "price": "15",
            "regular_price": "15",
            "sale_price": "",
            "manage_stock": True,
            "stock_quantity": 42,
            "stock_status": "instock",
            "categories": [{"id": 9, "name": "Coffee", "slug": "coffee"}],
            "images": [],
            "meta_data": [],
        },
        {
            "id": 94,
            "name": "Grinder (coming soon)",
            "slug": "grinder",
            "permalink": f"{STORE}/?post_type=product&p=94",
            "date_created": "2026-11-29T09:00:00",
            "date_created_gmt": "2026-11-29T08:00:00",
            "date_modified": "2026-11-29T09:00:00",
            "date_modified_gmt": "2026-11-29T08:00:00",
            "type": "simple",
            "status": "draft",
            "sku": "",
            "price": "",
            "manage_stock": False,
            "stock_quantity": None,
            "stock_status": "instock",
            "meta_data": [],
        },
    ]
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as vendor:
        customers = vendor.get(f"{STORE}/wp-json/wc/v3/customers").mock(
            return_value=_paged(customers_body, route="customers", page=1, total=2, pages=1)
        )
        products = vendor.get(f"{STORE}/wp-json/wc/v3/products").mock(
            return_value=_paged(products_body, route="products", page=1, total=2, pages=1)
        )
        async with connector_client(allow_private=False) as http:
            shop = open_commerce(
                "woocommerce",
                {"store_url": STORE + "/"},  # as merchants paste it
                {"api_key": CONSUMER_KEY, "api_secret": CONSUMER_SECRET},
                http,
                ConnectorContext(),
            )
            people = await shop.list_customers(SyncQuery(updated_since=since, limit=100))
            catalogue = await shop.list_products(SyncQuery(limit=100))

    listed = customers.calls.last.request
    _assert_authenticated_get(listed, "customers")
    assert _params(listed) == [
        ("order", "asc"),
        ("orderby", "id"),
        ("page", "1"),
        ("per_page", "100"),
    ]
    assert [(c.id, c.email, c.phone) for c in people.items] == [
        ("26", "new.buyer@example.com", "+49 30 000000")
    ]
    assert people.items[0].updated_at == datetime(2026, 11, 21, 14, 30, tzinfo=UTC)
    assert people.next_cursor is None

    listed = products.calls.last.request
    _assert_authenticated_get(listed, "products")
    assert _params(listed) == [
        ("order", "asc"),
        ("orderby", "id"),
        ("page", "1"),
        ("per_page", "100"),
        ("status", "any"),
    ]
    active, draft = catalogue.items
    assert (active.id, active.title, active.slug, active.status) == (
        "93",
        "Espresso beans 1 kg",
        "espresso-beans-1-kg",
        "active",
    )
    assert (active.sku, active.price, active.inventory_quantity) == ("ESP-1KG", Decimal(15), 42)
    assert active.url == f"{STORE}/product/espresso-beans-1-kg/"
    assert (draft.status, draft.sku, draft.price, draft.inventory_quantity) == (
        "draft",
        None,
        None,
        None,
    )
    assert catalogue.next_cursor is None
