"""Shopify through the Admin GraphQL API, with an Admin API access token.

- Endpoint ``POST {store}/admin/api/{version}/graphql.json`` with ``X-Shopify-Access-Token``
  (https://shopify.dev/docs/api/admin-graphql, https://shopify.dev/docs/apps/build/authentication-authorization/access-tokens).
- Pagination: connections with ``first``/``after`` and ``pageInfo { hasNextPage endCursor }``
  (https://shopify.dev/docs/api/usage/pagination-graphql); the listing's cursor wraps Shopify's.
- ``updated_since``: the search syntax ``updated_at:>='...'`` with ``sortKey: UPDATED_AT``
  (https://shopify.dev/docs/api/usage/search-syntax). Shopify's cursors are keyset cursors, so
  records changed during a sync move behind the cursor and are seen again, never skipped.
- Cost-based throttling (https://shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits):
  every answer reports ``extensions.cost`` with the bucket's ``throttleStatus``
  (``maximumAvailable``, ``currentlyAvailable``, ``restoreRate`` per second). The connector
  remembers each query's cost and the bucket and waits briefly before a call the bucket cannot
  pay for yet; a ``THROTTLED`` answer (it reports the cost) is retried once after a short
  refill. A longer wait raises :class:`~connectors.http.RateLimited` with the time the bucket
  needs, for the activity's retry to wait.
- Errors: 401 for a bad token; GraphQL ``errors`` with ``extensions.code`` (``THROTTLED``,
  ``ACCESS_DENIED`` for a missing scope, ``undefinedField`` when a field is gone in this API
  version: a schema mismatch); 402/423 for frozen or locked shops; 5xx.
- Identifiers are Shopify's global ids (``gid://shopify/Order/1``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import anyio
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
    AuthFailed,
    RateLimited,
    SchemaMismatch,
    Unreadable,
    VendorNotFound,
    VendorRejected,
    base_url_form,
    check_base_url,
    json_body,
    parse_as,
    parse_records,
    raise_for_status,
    send,
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

VENDOR = "Shopify"

#: Waiting for the bucket inside a call is fine for a moment; longer, the caller reschedules.
MAX_PACING_WAIT = 5.0
#: Shopify refuses a single query above 1000 points; an order with 25 line items costs ~184
#: (objects 1, connections 2 + first x node), so a page holds 5 of them.
MAX_ORDERS_PER_PAGE = 5
LINE_ITEMS_PER_ORDER = 25

_MONEY = "shopMoney { amount currencyCode }"
_CUSTOMER = """
  id firstName lastName
  defaultEmailAddress { emailAddress }
  defaultPhoneNumber { phoneNumber }
  numberOfOrders amountSpent { amount currencyCode }
  createdAt updatedAt
"""
_LINE_ITEMS = f"""
  nodes {{
    id name sku quantity
    originalUnitPriceSet {{ {_MONEY} }}
    discountedTotalSet {{ {_MONEY} }}
    product {{ id }} variant {{ id }}
  }}
  pageInfo {{ hasNextPage endCursor }}
"""
_ORDER = f"""
  id name email createdAt updatedAt cancelledAt
  displayFinancialStatus displayFulfillmentStatus currencyCode
  totalPriceSet {{ {_MONEY} }}
  subtotalPriceSet {{ {_MONEY} }}
  customer {{ id }}
  lineItems(first: {LINE_ITEMS_PER_ORDER}) {{ {_LINE_ITEMS} }}
"""
_PRODUCT = """
  id title handle status createdAt updatedAt totalInventory onlineStoreUrl
  priceRangeV2 { minVariantPrice { amount currencyCode } }
  variants(first: 1) { nodes { sku } }
"""
_PAGE_INFO = "pageInfo { hasNextPage endCursor }"

QUERIES = {
    "shop": "query Shop { shop { id name myshopifyDomain } }",
    "customers": f"""query Customers($first: Int!, $after: String, $query: String) {{
  customers(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {{
    nodes {{ {_CUSTOMER} }} {_PAGE_INFO} }} }}""",
    "customer": f"query Customer($id: ID!) {{ customer(id: $id) {{ {_CUSTOMER} }} }}",
    "orders": f"""query Orders($first: Int!, $after: String, $query: String) {{
  orders(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {{
    nodes {{ {_ORDER} }} {_PAGE_INFO} }} }}""",
    "order": f"query Order($id: ID!) {{ order(id: $id) {{ {_ORDER} }} }}",
    "line_items": f"""query LineItems($id: ID!, $after: String) {{
  order(id: $id) {{ lineItems(first: 50, after: $after) {{ {_LINE_ITEMS} }} }} }}""",
    "products": f"""query Products($first: Int!, $after: String, $query: String) {{
  products(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {{
    nodes {{ {_PRODUCT} }} {_PAGE_INFO} }} }}""",
    "product": f"query Product($id: ID!) {{ product(id: $id) {{ {_PRODUCT} }} }}",
}


class ShopifySettings(ConnectionSettings):
    store_url: str = Field(
        title="Store URL",
        description="The store's admin domain, e.g. https://example.myshopify.com",
        max_length=500,
    )
    api_version: str = Field(
        default="2025-07",
        title="API version",
        pattern=r"^\d{4}-(01|04|07|10)$",
        description="Shopify's quarterly API version",
    )

    @field_validator("store_url")
    @classmethod
    def _url_form(cls, value: str) -> str:
        return base_url_form(value)


class ShopifyToken(ApiKeyCredentials):
    api_key: SecretStr = Field(
        title="Admin API access token", min_length=1, json_schema_extra={"format": "password"}
    )


# --- The vendor's shapes --------------------------------------------------------------------


class _Money(BaseModel):
    amount: Decimal
    currencyCode: str


class _MoneySet(BaseModel):
    shopMoney: _Money


class _Ref(BaseModel):
    id: str


class _PageInfo(BaseModel):
    hasNextPage: bool
    endCursor: str | None = None


class _Email(BaseModel):
    emailAddress: str | None = None


class _Phone(BaseModel):
    phoneNumber: str | None = None


class _Customer(BaseModel):
    id: str
    firstName: str | None = None
    lastName: str | None = None
    defaultEmailAddress: _Email | None = None
    defaultPhoneNumber: _Phone | None = None
    numberOfOrders: int | None = None
    amountSpent: _Money | None = None
    createdAt: datetime
    updatedAt: datetime


class _LineItem(BaseModel):
    id: str
    name: str
    sku: str | None = None
    quantity: int
    originalUnitPriceSet: _MoneySet | None = None
    discountedTotalSet: _MoneySet | None = None
    product: _Ref | None = None
    variant: _Ref | None = None


class _LineItems(BaseModel):
    nodes: list[_LineItem]
    pageInfo: _PageInfo


class _Order(BaseModel):
    id: str
    name: str
    email: str | None = None
    createdAt: datetime
    updatedAt: datetime
    cancelledAt: datetime | None = None
    displayFinancialStatus: str | None = None
    displayFulfillmentStatus: str | None = None
    currencyCode: str
    totalPriceSet: _MoneySet
    subtotalPriceSet: _MoneySet | None = None
    customer: _Ref | None = None
    lineItems: _LineItems


class _Variant(BaseModel):
    sku: str | None = None


class _Variants(BaseModel):
    nodes: list[_Variant]


class _PriceRange(BaseModel):
    minVariantPrice: _Money


class _Product(BaseModel):
    id: str
    title: str
    handle: str | None = None
    status: str
    createdAt: datetime
    updatedAt: datetime
    totalInventory: int | None = None
    onlineStoreUrl: str | None = None
    priceRangeV2: _PriceRange | None = None
    variants: _Variants | None = None


class _Shop(BaseModel):
    id: str
    name: str
    myshopifyDomain: str


class _ThrottleStatus(BaseModel):
    maximumAvailable: float
    currentlyAvailable: float
    restoreRate: float = Field(gt=0)


class _Cost(BaseModel):
    requestedQueryCost: float
    actualQueryCost: float | None = None
    throttleStatus: _ThrottleStatus


N = TypeVar("N", bound=BaseModel)


@dataclass
class _Bucket:
    """The leaky bucket as Shopify last reported it."""

    available: float
    maximum: float
    restore_rate: float
    at: float

    def now(self, clock: float) -> float:
        return min(self.maximum, self.available + (clock - self.at) * self.restore_rate)


class Shopify:
    """:class:`~connectors.commerce.CommercePort` over one store's Admin GraphQL API."""

    def __init__(
        self,
        settings: ShopifySettings,
        credentials: ApiKeyCredentials,
        http: httpx.AsyncClient,
        context: ConnectorContext,
    ) -> None:
        store = check_base_url(settings.store_url, allow_private=context.allow_private_urls)
        self._endpoint = f"{store}/admin/api/{settings.api_version}/graphql.json"
        self._token = credentials.api_key.get_secret_value()
        self._http = http
        self._max_bytes = context.max_response_bytes
        self._bucket: _Bucket | None = None
        self._costs: dict[str, float] = {}

    async def verify(self) -> AccountInfo:
        data = await self._query("shop", {})
        shop = parse_as(_Shop, data.get("shop"), vendor=VENDOR, path="$.data.shop")
        return AccountInfo(
            account_id=shop.id, name=shop.name, detail={"domain": shop.myshopifyDomain}
        )

    async def revoke(self) -> bool:
        # An Admin API token is revoked by uninstalling the app in the store's admin.
        return False

    # --- Reads --------------------------------------------------------------------------

    async def list_customers(self, query: SyncQuery) -> SyncPage[Customer]:
        nodes, cursor, unreadable = await self._list("customers", query, _Customer, query.limit)
        return SyncPage(
            items=[_customer(c) for c in nodes], next_cursor=cursor, unreadable=unreadable
        )

    async def get_customer(self, customer_id: str) -> Customer:
        return _customer(await self._get("customer", customer_id, _Customer))

    async def list_orders(self, query: SyncQuery) -> SyncPage[Order]:
        limit = min(query.limit, MAX_ORDERS_PER_PAGE)
        nodes, cursor, unreadable = await self._list("orders", query, _Order, limit)
        return SyncPage(
            items=[await self._order(o) for o in nodes], next_cursor=cursor, unreadable=unreadable
        )

    async def get_order(self, order_id: str) -> Order:
        return await self._order(await self._get("order", order_id, _Order))

    async def list_products(self, query: SyncQuery) -> SyncPage[Product]:
        nodes, cursor, unreadable = await self._list("products", query, _Product, query.limit)
        return SyncPage(
            items=[_product(p) for p in nodes], next_cursor=cursor, unreadable=unreadable
        )

    async def get_product(self, product_id: str) -> Product:
        return _product(await self._get("product", product_id, _Product))

    async def _list(
        self, name: str, query: SyncQuery, model: type[N], limit: int
    ) -> tuple[list[N], str | None, list[Unreadable]]:
        if query.cursor is not None:
            state = decode_cursor(query.cursor, vendor=VENDOR)
        else:
            since = query.updated_since
            search = f"updated_at:>='{utc(since).isoformat()}'" if since else None
            state = {"after": None, "query": search, "first": limit}
        data = await self._query(
            name, {"first": state["first"], "after": state["after"], "query": state["query"]}
        )
        path = f"$.data.{name}"
        connection = data.get(name)
        if not isinstance(connection, dict):
            raise SchemaMismatch(f"{VENDOR} sent no {name} connection", vendor=VENDOR, field=path)
        info = parse_as(
            _PageInfo, connection.get("pageInfo"), vendor=VENDOR, path=f"{path}.pageInfo"
        )
        raw = connection.get("nodes")
        if not isinstance(raw, list):
            raise SchemaMismatch(f"{VENDOR} sent no {name}", vendor=VENDOR, field=f"{path}.nodes")
        nodes, unreadable = parse_records(model, raw, vendor=VENDOR, path=f"{path}.nodes")
        next_cursor = None
        if info.hasNextPage and info.endCursor:
            next_cursor = encode_cursor({**state, "after": info.endCursor})
        return nodes, next_cursor, unreadable

    async def _get(self, name: str, gid: str, model: type[N]) -> N:
        kind = name.capitalize()
        if not gid.startswith(f"gid://shopify/{kind}/"):
            raise VendorNotFound(f"not a Shopify {name} id: {gid!r}", vendor=VENDOR, status=404)
        data = await self._query(name, {"id": gid})
        if data.get(name) is None:
            raise VendorNotFound(f"{VENDOR} has no {name} {gid}", vendor=VENDOR, status=404)
        return parse_as(model, data[name], vendor=VENDOR, path=f"$.data.{name}")

    async def _order(self, order: _Order) -> Order:
        items = list(order.lineItems.nodes)
        info = order.lineItems.pageInfo
        # Orders with more line items than a listing carries: fetch the rest.
        while info.hasNextPage and info.endCursor:
            data = await self._query("line_items", {"id": order.id, "after": info.endCursor})
            rest = parse_as(
                _LineItems,
                (data.get("order") or {}).get("lineItems"),
                vendor=VENDOR,
                path="$.data.order.lineItems",
            )
            items.extend(rest.nodes)
            info = rest.pageInfo
        return _order(order, items)

    # --- GraphQL ------------------------------------------------------------------------

    async def _query(self, name: str, variables: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self._query_once(name, variables)
        except RateLimited as exc:
            # THROTTLED told this query's cost: a short refill is waited for here, once.
            if exc.status is not None or exc.retry_after is None:
                raise
            if exc.retry_after > MAX_PACING_WAIT:
                raise
            await anyio.sleep(exc.retry_after)
            return await self._query_once(name, variables)

    async def _query_once(self, name: str, variables: dict[str, Any]) -> dict[str, Any]:
        await self._pace(name)
        request = self._http.build_request(
            "POST",
            self._endpoint,
            json={"query": QUERIES[name], "variables": variables},
            headers={"X-Shopify-Access-Token": self._token},
        )
        response = await send(self._http, request, vendor=VENDOR, max_bytes=self._max_bytes)
        if response.status_code >= 300:
            raise_for_status(response, vendor=VENDOR, reason=_http_reason(response))
        body = json_body(response, vendor=VENDOR)
        if not isinstance(body, dict):
            raise SchemaMismatch(f"{VENDOR} sent a non-object answer", vendor=VENDOR)
        cost = self._record_cost(name, body.get("extensions"))
        errors = body.get("errors")
        if errors:
            raise _graphql_error(errors, cost)
        data = body.get("data")
        if not isinstance(data, dict):
            raise SchemaMismatch(f"{VENDOR} sent no data", vendor=VENDOR, field="$.data")
        return data

    async def _pace(self, name: str) -> None:
        """Wait until the bucket can pay for this query, as far as its last cost tells."""
        cost = self._costs.get(name)
        if cost is None or self._bucket is None:
            return
        deficit = cost - self._bucket.now(time.monotonic())
        if deficit <= 0:
            return
        wait = deficit / self._bucket.restore_rate
        if wait > MAX_PACING_WAIT:
            raise RateLimited(
                f"{VENDOR}'s query budget needs {wait:.1f} s to refill",
                vendor=VENDOR,
                status=None,
                retry_after=wait,
            )
        await anyio.sleep(wait)

    def _record_cost(self, name: str, extensions: Any) -> _Cost | None:
        raw = extensions.get("cost") if isinstance(extensions, dict) else None
        if raw is None:
            return None
        cost = parse_as(_Cost, raw, vendor=VENDOR, path="$.extensions.cost")
        status = cost.throttleStatus
        self._costs[name] = cost.requestedQueryCost
        self._bucket = _Bucket(
            available=status.currentlyAvailable,
            maximum=status.maximumAvailable,
            restore_rate=status.restoreRate,
            at=time.monotonic(),
        )
        return cost


def _http_reason(response: httpx.Response) -> str | None:
    """Shopify's ``{"errors": "..."}`` (or a list of messages) on HTTP errors."""
    try:
        body = response.json()
    except ValueError:
        return None
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, str):
        return errors
    if isinstance(errors, list):
        return "; ".join(
            str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors
        )
    return None


_SCHEMA_CODES = {
    "undefinedField",
    "argumentNotAccepted",
    "undefinedType",
    "missingRequiredArguments",
}


def _graphql_error(errors: Any, cost: _Cost | None) -> Exception:
    if not isinstance(errors, list) or not errors:
        return SchemaMismatch(f"{VENDOR} sent malformed errors", vendor=VENDOR, field="$.errors")
    first: dict[str, Any] = (
        errors[0] if isinstance(errors[0], dict) else {"message": str(errors[0])}
    )
    extensions = first.get("extensions")
    if not isinstance(extensions, dict):
        extensions = {}
    code = str(extensions.get("code", ""))
    message = str(first.get("message", "GraphQL error"))
    if code == "THROTTLED":
        retry_after = None
        if cost is not None:
            status = cost.throttleStatus
            needed = cost.requestedQueryCost - status.currentlyAvailable
            retry_after = max(0.0, needed / status.restoreRate)
        return RateLimited(
            f"{VENDOR} throttled the query: {message}",
            vendor=VENDOR,
            status=None,
            retry_after=retry_after,
        )
    if code == "ACCESS_DENIED":
        return AuthFailed(f"{VENDOR} denied access: {message}", vendor=VENDOR, status=None)
    if code in _SCHEMA_CODES:
        field = (
            ".".join(str(extensions[k]) for k in ("typeName", "fieldName") if extensions.get(k))
            or "$.errors[0]"
        )
        return SchemaMismatch(
            f"{VENDOR} does not know {field}: {message}", vendor=VENDOR, field=field
        )
    return VendorRejected(
        f"{VENDOR} refused the query: {message}", vendor=VENDOR, reason=message, code=code or None
    )


# --- Mapping --------------------------------------------------------------------------------


def _customer(c: _Customer) -> Customer:
    return Customer(
        id=c.id,
        email=c.defaultEmailAddress.emailAddress if c.defaultEmailAddress else None,
        first_name=c.firstName,
        last_name=c.lastName,
        phone=c.defaultPhoneNumber.phoneNumber if c.defaultPhoneNumber else None,
        orders_count=c.numberOfOrders,
        total_spent=c.amountSpent.amount if c.amountSpent else None,
        currency=c.amountSpent.currencyCode if c.amountSpent else None,
        created_at=utc(c.createdAt),
        updated_at=utc(c.updatedAt),
    )


def _order_status(order: _Order) -> OrderStatus:
    financial = order.displayFinancialStatus or ""
    if order.cancelledAt is not None or financial == "VOIDED":
        return "cancelled"
    if financial == "REFUNDED":
        return "refunded"
    if order.displayFulfillmentStatus == "FULFILLED":
        return "fulfilled"
    if financial in ("PAID", "PARTIALLY_REFUNDED", "PARTIALLY_PAID"):
        return "paid"
    return "pending"


def _order(order: _Order, items: list[_LineItem]) -> Order:
    return Order(
        id=order.id,
        number=order.name,
        status=_order_status(order),
        vendor_status="/".join(
            s for s in (order.displayFinancialStatus, order.displayFulfillmentStatus) if s
        ),
        currency=order.currencyCode,
        total=order.totalPriceSet.shopMoney.amount,
        subtotal=order.subtotalPriceSet.shopMoney.amount if order.subtotalPriceSet else None,
        customer_id=order.customer.id if order.customer else None,
        email=order.email,
        line_items=[
            LineItem(
                id=item.id,
                name=item.name,
                product_id=item.product.id if item.product else None,
                variant_id=item.variant.id if item.variant else None,
                sku=item.sku or None,
                quantity=item.quantity,
                unit_price=(
                    item.originalUnitPriceSet.shopMoney.amount
                    if item.originalUnitPriceSet
                    else None
                ),
                total=item.discountedTotalSet.shopMoney.amount if item.discountedTotalSet else None,
            )
            for item in items
        ],
        created_at=utc(order.createdAt),
        updated_at=utc(order.updatedAt),
    )


_PRODUCT_STATUS: dict[str, ProductStatus] = {
    "ACTIVE": "active",
    "DRAFT": "draft",
    "ARCHIVED": "archived",
}


def _product(p: _Product) -> Product:
    price = p.priceRangeV2.minVariantPrice if p.priceRangeV2 else None
    variants = p.variants.nodes if p.variants else []
    return Product(
        id=p.id,
        title=p.title,
        slug=p.handle,
        status=_PRODUCT_STATUS.get(p.status, "draft"),
        sku=(variants[0].sku or None) if variants else None,
        price=price.amount if price else None,
        currency=price.currencyCode if price else None,
        inventory_quantity=p.totalInventory,
        url=p.onlineStoreUrl,
        created_at=utc(p.createdAt),
        updated_at=utc(p.updatedAt),
    )


def _open(
    settings: ShopifySettings,
    credentials: ApiKeyCredentials,
    http: httpx.AsyncClient,
    context: ConnectorContext,
) -> Shopify:
    return Shopify(settings, credentials, http, context)


SPEC = ConnectorSpec(
    id="shopify",
    kind="commerce",
    display_name="Shopify",
    description="Customers, orders and products of a Shopify store (Admin GraphQL API).",
    docs_url="https://shopify.dev/docs/api/admin-graphql",
    settings_model=ShopifySettings,
    auth={"api_key": ShopifyToken},
    factory=_open,
    # The standard plan's bucket refills 100 points a second; a page costs ~40-900.
    rate_limit=RateLimit(requests=4, per_seconds=1, concurrency=2),
)
