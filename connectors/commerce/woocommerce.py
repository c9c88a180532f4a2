"""WooCommerce through its REST API (``wc/v3``), signed in with a consumer key and secret.

- Auth: HTTP Basic with the consumer key and secret, which WooCommerce accepts over https
  (https://woocommerce.github.io/woocommerce-rest-api-docs/#authentication-over-https); over
  plain http it wants OAuth 1.0a signatures instead, so shops are reached over https only
  (plain http is allowed solely with ``BIZ_CONNECTOR_ALLOW_PRIVATE_URLS``, for test peers).
- Lists are paged by ``page``/``per_page`` (at most 100) with ``X-WP-TotalPages``
  (https://woocommerce.github.io/woocommerce-rest-api-docs/#pagination).
- ``updated_since``: orders and products filter by ``modified_after`` (with ``dates_are_gmt``);
  the customers endpoint has no such filter, so customers are paged in full and filtered here.
  Listings are ordered by id: with page numbers, a record that changes during a sync may then
  appear twice (harmless) but none is skipped, as they could be if ordered by modification.
- Errors are WordPress's ``{"code", "message", "data": {"status"}}``.
- A listed record that does not parse is reported in the page's ``unreadable`` (id and
  reason), not as an error of the whole page.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from pydantic import BaseModel, Field, SecretStr, field_validator

from connectors.commerce import (
    Customer,
    LineItem,
    Order,
    OrderStatus,
    Product,
    ProductStatus,
    SyncPage,
    SyncQuery,
)
from connectors.http import (
    VendorNotFound,
    base_url_form,
    check_base_url,
    json_body,
    parse_as,
    parse_records,
    utc,
)
from connectors.ports import AccountInfo, decode_cursor, encode_cursor
from connectors.registry import (
    ApiKeyCredentials,
    ConnectionSettings,
    ConnectorContext,
    ConnectorSpec,
    RateLimit,
)
from connectors.wprest import WPRest

VENDOR = "WooCommerce"

_ORDER_STATUS: dict[str, OrderStatus] = {
    "pending": "pending",
    "on-hold": "pending",
    "checkout-draft": "pending",
    "processing": "paid",
    "completed": "fulfilled",
    "cancelled": "cancelled",
    "refunded": "refunded",
    "failed": "failed",
    "trash": "cancelled",
}
_PRODUCT_STATUS: dict[str, ProductStatus] = {
    "publish": "active",
    "draft": "draft",
    "pending": "draft",
    "future": "draft",
    "private": "archived",
}


class WooCommerceSettings(ConnectionSettings):
    store_url: str = Field(
        title="Store URL",
        description="The WordPress site running WooCommerce, e.g. https://shop.example.com",
        max_length=500,
    )

    @field_validator("store_url")
    @classmethod
    def _url_form(cls, value: str) -> str:
        return base_url_form(value)


class WooCommerceKeys(ApiKeyCredentials):
    api_key: SecretStr = Field(
        title="Consumer key", min_length=1, json_schema_extra={"format": "password"}
    )
    api_secret: SecretStr = Field(
        title="Consumer secret", min_length=1, json_schema_extra={"format": "password"}
    )


# --- The vendor's shapes --------------------------------------------------------------------


class _Billing(BaseModel):
    email: str | None = None
    phone: str | None = None


class _WCCustomer(BaseModel):
    id: int
    email: str
    first_name: str = ""
    last_name: str = ""
    billing: _Billing | None = None
    date_created_gmt: datetime | None = None
    date_modified_gmt: datetime | None = None


class _WCLineItem(BaseModel):
    id: int
    name: str
    product_id: int | None = None
    variation_id: int | None = None
    sku: str | None = None
    quantity: int
    price: Decimal | None = None
    total: Decimal | None = None


class _WCOrder(BaseModel):
    id: int
    number: str
    status: str
    currency: str
    total: Decimal
    customer_id: int = 0
    billing: _Billing | None = None
    line_items: list[_WCLineItem] = []
    date_created_gmt: datetime | None = None
    date_modified_gmt: datetime | None = None


class _WCProduct(BaseModel):
    id: int
    name: str
    slug: str | None = None
    permalink: str | None = None
    status: str
    sku: str | None = None
    price: str | None = None
    stock_quantity: int | None = None
    date_created_gmt: datetime | None = None
    date_modified_gmt: datetime | None = None


class _WPSite(BaseModel):
    name: str
    url: str | None = None


class WooCommerce:
    """:class:`~connectors.commerce.CommercePort` over one store's ``wc/v3`` API."""

    def __init__(
        self,
        settings: WooCommerceSettings,
        credentials: WooCommerceKeys,
        http: httpx.AsyncClient,
        context: ConnectorContext,
    ) -> None:
        store_url = check_base_url(settings.store_url, allow_private=context.allow_private_urls)
        self._rest = WPRest(
            http,
            site_url=store_url,
            username=credentials.api_key.get_secret_value(),
            password=credentials.api_secret.get_secret_value(),
            vendor=VENDOR,
            max_bytes=context.max_response_bytes,
        )

    async def verify(self) -> AccountInfo:
        # An authenticated read the key needs anyway; the site index names the store.
        await self._rest.call("GET", "wc/v3/orders", params={"per_page": 1, "_fields": "id"})
        site = parse_as(
            _WPSite,
            json_body(
                await self._rest.call("GET", "", params={"_fields": "name,url"}),
                vendor=VENDOR,
            ),
            vendor=VENDOR,
        )
        return AccountInfo(account_id=site.url or site.name, name=site.name)

    async def revoke(self) -> bool:
        # wc/v3 has no route to delete the calling key; the merchant does it in WooCommerce.
        return False

    # --- Customers ----------------------------------------------------------------------

    async def list_customers(self, query: SyncQuery) -> SyncPage[Customer]:
        state = self._state(query)
        data, next_cursor = await self._page("wc/v3/customers", state, orderby="id", order="asc")
        since = utc(datetime.fromisoformat(state["since"])) if state.get("since") else None
        parsed, unreadable = parse_records(_WCCustomer, data, vendor=VENDOR)
        customers = [_customer(c) for c in parsed]
        if since is not None:
            customers = [c for c in customers if c.updated_at is None or c.updated_at >= since]
        return SyncPage(items=customers, next_cursor=next_cursor, unreadable=unreadable)

    async def get_customer(self, customer_id: str) -> Customer:
        data = await self._rest.get_json(f"wc/v3/customers/{_int_id(customer_id)}")
        return _customer(parse_as(_WCCustomer, data, vendor=VENDOR))

    # --- Orders -------------------------------------------------------------------------

    async def list_orders(self, query: SyncQuery) -> SyncPage[Order]:
        state = self._state(query)
        data, next_cursor = await self._page(
            "wc/v3/orders",
            state,
            orderby="id",
            order="asc",
            modified_after=state.get("since"),
            dates_are_gmt=True if state.get("since") else None,
        )
        parsed, unreadable = parse_records(_WCOrder, data, vendor=VENDOR)
        return SyncPage(
            items=[_order(o) for o in parsed], next_cursor=next_cursor, unreadable=unreadable
        )

    async def get_order(self, order_id: str) -> Order:
        data = await self._rest.get_json(f"wc/v3/orders/{_int_id(order_id)}")
        return _order(parse_as(_WCOrder, data, vendor=VENDOR))

    # --- Products -----------------------------------------------------------------------

    async def list_products(self, query: SyncQuery) -> SyncPage[Product]:
        state = self._state(query)
        data, next_cursor = await self._page(
            "wc/v3/products",
            state,
            orderby="id",
            order="asc",
            status="any",
            modified_after=state.get("since"),
            dates_are_gmt=True if state.get("since") else None,
        )
        parsed, unreadable = parse_records(_WCProduct, data, vendor=VENDOR)
        return SyncPage(
            items=[_product(p) for p in parsed], next_cursor=next_cursor, unreadable=unreadable
        )

    async def get_product(self, product_id: str) -> Product:
        data = await self._rest.get_json(f"wc/v3/products/{_int_id(product_id)}")
        return _product(parse_as(_WCProduct, data, vendor=VENDOR))

    # --- Paging -------------------------------------------------------------------------

    def _state(self, query: SyncQuery) -> dict[str, Any]:
        if query.cursor is not None:
            return decode_cursor(query.cursor, vendor=VENDOR)
        since = query.updated_since
        if since is not None:
            # modified_after is strict and to the second; the port means "at or after".
            since = utc(since).replace(tzinfo=None, microsecond=0) - timedelta(seconds=1)
        return {
            "page": 1,
            "per_page": query.limit,
            # WooCommerce reads the filter as GMT with dates_are_gmt: send it naive in UTC.
            "since": since.isoformat() if since else None,
        }

    async def _page(
        self, route: str, state: dict[str, Any], **params: Any
    ) -> tuple[Any, str | None]:
        page = int(state["page"])
        data, pages = await self._rest.page(
            route, page=page, per_page=int(state["per_page"]), **params
        )
        more = page < pages
        return data, encode_cursor({**state, "page": page + 1}) if more else None


def _int_id(value: str) -> int:
    if not value.isdigit():
        raise VendorNotFound(f"{VENDOR} ids are numbers, not {value!r}", vendor=VENDOR, status=404)
    return int(value)


def _customer(customer: _WCCustomer) -> Customer:
    return Customer(
        id=str(customer.id),
        email=customer.email or None,
        first_name=customer.first_name or None,
        last_name=customer.last_name or None,
        phone=(customer.billing.phone or None) if customer.billing else None,
        created_at=utc(customer.date_created_gmt) if customer.date_created_gmt else None,
        updated_at=utc(customer.date_modified_gmt) if customer.date_modified_gmt else None,
    )


def _order(order: _WCOrder) -> Order:
    return Order(
        id=str(order.id),
        number=order.number,
        status=_ORDER_STATUS.get(order.status, "pending"),
        vendor_status=order.status,
        currency=order.currency,
        total=order.total,
        subtotal=sum((item.total or Decimal(0) for item in order.line_items), Decimal(0)),
        customer_id=str(order.customer_id) if order.customer_id else None,
        email=(order.billing.email or None) if order.billing else None,
        line_items=[
            LineItem(
                id=str(item.id),
                name=item.name,
                product_id=str(item.product_id) if item.product_id else None,
                variant_id=str(item.variation_id) if item.variation_id else None,
                sku=item.sku or None,
                quantity=item.quantity,
                unit_price=item.price,
                total=item.total,
            )
            for item in order.line_items
        ],
        created_at=utc(order.date_created_gmt) if order.date_created_gmt else None,
        updated_at=utc(order.date_modified_gmt) if order.date_modified_gmt else None,
    )


def _product(product: _WCProduct) -> Product:
    return Product(
        id=str(product.id),
        title=product.name,
        slug=product.slug,
        status=_PRODUCT_STATUS.get(product.status, "draft"),
        sku=product.sku or None,
        price=Decimal(product.price) if product.price else None,
        inventory_quantity=product.stock_quantity,
        url=product.permalink,
        created_at=utc(product.date_created_gmt) if product.date_created_gmt else None,
        updated_at=utc(product.date_modified_gmt) if product.date_modified_gmt else None,
    )


def _open(
    settings: WooCommerceSettings,
    credentials: WooCommerceKeys,
    http: httpx.AsyncClient,
    context: ConnectorContext,
) -> WooCommerce:
    return WooCommerce(settings, credentials, http, context)


SPEC = ConnectorSpec(
    id="woocommerce",
    kind="commerce",
    display_name="WooCommerce",
    description="Customers, orders and products of a WooCommerce store (REST API v3).",
    docs_url="https://woocommerce.github.io/woocommerce-rest-api-docs/",
    settings_model=WooCommerceSettings,
    auth={"api_key": WooCommerceKeys},
    factory=_open,
    # wc/v3 sets no limit itself; hosts and security plugins do.
    rate_limit=RateLimit(requests=5, per_seconds=1, concurrency=2),
)
