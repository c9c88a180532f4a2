"""A Shopify peer: the slice of the Admin GraphQL API the Shopify connector reads, over HTTP.

Queries run through a real GraphQL engine (graphql-core) against a schema written from
Shopify's reference, so a query naming a field this API version lacks fails as it would at
Shopify. What it follows, and where Shopify documents it:

- **Endpoint and auth**: ``POST /admin/api/{version}/graphql.json`` with
  ``X-Shopify-Access-Token``; a missing or wrong token is a 401 with
  ``{"errors": "[API] Invalid API key or access token (unrecognized login or wrong
  password)"}``. A token without a scope gets ``ACCESS_DENIED`` for that field in ``errors``
  (HTTP 200). https://shopify.dev/docs/apps/build/authentication-authorization/access-tokens,
  https://shopify.dev/docs/api/usage/response-codes
- **Schema slice** (https://shopify.dev/docs/api/admin-graphql): ``shop``; ``customers``,
  ``orders``, ``products`` connections (``first``, ``after``, ``query``, ``sortKey``,
  ``reverse``; ``nodes`` and ``pageInfo``) and ``customer(id)``, ``order(id)``,
  ``product(id)`` by global id (``gid://shopify/Order/1``; unknown ids answer null).
  ``numberOfOrders`` is an ``UnsignedInt64``, sent as a string; money is ``MoneyV2`` with a
  decimal string amount. A field removed with :meth:`ShopifyPeer.remove_field` fails
  validation with ``undefinedField`` naming the type and field, as after a version change.
- **Pagination** (https://shopify.dev/docs/api/usage/pagination-graphql): opaque keyset
  cursors over the sort key; ``pageInfo { hasNextPage endCursor }``.
- **Search syntax** (https://shopify.dev/docs/api/usage/search-syntax): ``updated_at:>'...'``
  and ``updated_at:>='...'``; other terms are not supported by the peer.
- **Cost and throttling** (https://shopify.dev/docs/apps/build/apis/graphql-admin/rate-limits):
  scalars and enums cost 0, objects 1, connections 2 plus ``first`` times their node's cost.
  A leaky bucket per store (``maximumAvailable``, ``restoreRate`` per second) pays the
  requested cost up front; a query it cannot pay for gets ``THROTTLED`` (HTTP 200) and one
  above the bucket's size ``MAX_COST_EXCEEDED``. Every answer reports ``extensions.cost``
  with ``throttleStatus``. Simplification: the actual cost equals the requested one (Shopify
  refunds the difference after running the query).
- **Faults**: a test queues HTTP answers (5xx, 429 with ``Retry-After`` as Shopify's edge sends
  them, 402 for a frozen shop) for the next requests.

Use it with ``pytest_plugins = ["tests.peers.shopify"]`` (PYTEST_DONT_REWRITE: test modules
import it before pytest loads it as a plugin).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from graphql import (
    FieldNode,
    GraphQLError,
    GraphQLObjectType,
    GraphQLSchema,
    OperationDefinitionNode,
    SelectionSetNode,
    build_schema,
    execute_sync,
    get_named_type,
    parse,
    validate,
    value_from_ast_untyped,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.peers.asgi import serve

ACCESS_TOKEN = "shpat_0123456789abcdef0123456789abcdef"
API_VERSION = "2025-07"

SCHEMA = """
scalar DateTime
scalar Decimal
scalar UnsignedInt64
scalar URL

enum CurrencyCode { EUR USD GBP }
enum ProductStatus { ACTIVE ARCHIVED DRAFT }
enum CustomerSortKeys { CREATED_AT ID NAME RELEVANCE UPDATED_AT }
enum OrderSortKeys { CREATED_AT ID RELEVANCE UPDATED_AT }
enum ProductSortKeys { CREATED_AT ID RELEVANCE TITLE UPDATED_AT }
enum OrderDisplayFinancialStatus {
  AUTHORIZED EXPIRED PAID PARTIALLY_PAID PARTIALLY_REFUNDED PENDING REFUNDED VOIDED
}
enum OrderDisplayFulfillmentStatus {
  FULFILLED IN_PROGRESS ON_HOLD OPEN PARTIALLY_FULFILLED PENDING_FULFILLMENT RESTOCKED
  SCHEDULED UNFULFILLED
}

type PageInfo {
  hasNextPage: Boolean!
  hasPreviousPage: Boolean!
  endCursor: String
  startCursor: String
}

type MoneyV2 {
  amount: Decimal!
  currencyCode: CurrencyCode!
}

type MoneyBag {
  shopMoney: MoneyV2!
  presentmentMoney: MoneyV2!
}

type Shop {
  id: ID!
  name: String!
  myshopifyDomain: String!
  currencyCode: CurrencyCode!
}

type CustomerEmailAddress {
  emailAddress: String
}

type CustomerPhoneNumber {
  phoneNumber: String!
}

type Customer {
  id: ID!
  firstName: String
  lastName: String
  defaultEmailAddress: CustomerEmailAddress
  defaultPhoneNumber: CustomerPhoneNumber
  numberOfOrders: UnsignedInt64!
  amountSpent: MoneyV2!
  createdAt: DateTime!
  updatedAt: DateTime!
}

type CustomerConnection {
  nodes: [Customer!]!
  pageInfo: PageInfo!
}

type ProductVariant {
  id: ID!
  sku: String
}

type ProductVariantConnection {
  nodes: [ProductVariant!]!
  pageInfo: PageInfo!
}

type ProductPriceRangeV2 {
  minVariantPrice: MoneyV2!
  maxVariantPrice: MoneyV2!
}

type Product {
  id: ID!
  title: String!
  handle: String!
  status: ProductStatus!
  createdAt: DateTime!
  updatedAt: DateTime!
  totalInventory: Int!
  onlineStoreUrl: URL
  priceRangeV2: ProductPriceRangeV2!
  variants(first: Int, after: String): ProductVariantConnection!
}

type ProductConnection {
  nodes: [Product!]!
  pageInfo: PageInfo!
}

type LineItem {
  id: ID!
  name: String!
  sku: String
  quantity: Int!
  originalUnitPriceSet: MoneyBag!
  discountedTotalSet: MoneyBag!
  product: Product
  variant: ProductVariant
}

type LineItemConnection {
  nodes: [LineItem!]!
  pageInfo: PageInfo!
}

type Order {
  id: ID!
  name: String!
  email: String
  createdAt: DateTime!
  updatedAt: DateTime!
  cancelledAt: DateTime
  displayFinancialStatus: OrderDisplayFinancialStatus
  displayFulfillmentStatus: OrderDisplayFulfillmentStatus!
  currencyCode: CurrencyCode!
  totalPriceSet: MoneyBag!
  subtotalPriceSet: MoneyBag
  customer: Customer
  lineItems(first: Int, after: String): LineItemConnection!
}

type OrderConnection {
  nodes: [Order!]!
  pageInfo: PageInfo!
}

type QueryRoot {
  shop: Shop!
  customers(first: Int, after: String, query: String, sortKey: CustomerSortKeys, reverse: Boolean): CustomerConnection!
  customer(id: ID!): Customer
  orders(first: Int, after: String, query: String, sortKey: OrderSortKeys, reverse: Boolean): OrderConnection!
  order(id: ID!): Order
  products(first: Int, after: String, query: String, sortKey: ProductSortKeys, reverse: Boolean): ProductConnection!
  product(id: ID!): Product
}

schema { query: QueryRoot }
"""  # noqa: E501 - one field per line, as Shopify's reference lists them

_SCOPES = {
    "customers": "read_customers",
    "customer": "read_customers",
    "orders": "read_orders",
    "order": "read_orders",
    "products": "read_products",
    "product": "read_products",
}
_INVALID_TOKEN = "[API] Invalid API key or access token (unrecognized login or wrong password)"


@dataclass
class Fault:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Bucket:
    """Shopify's leaky bucket for one app on one store."""

    maximum: float = 1000.0
    restore_rate: float = 100.0
    available: float = 1000.0
    at: float = field(default_factory=time.monotonic)

    def refill(self) -> None:
        now = time.monotonic()
        self.available = min(self.maximum, self.available + (now - self.at) * self.restore_rate)
        self.at = now

    def status(self) -> dict[str, float]:
        return {
            "maximumAvailable": self.maximum,
            "currentlyAvailable": round(self.available, 1),
            "restoreRate": self.restore_rate,
        }


@dataclass
class ShopifyPeer:
    url: str = ""
    scopes: set[str] = field(default_factory=lambda: set(_SCOPES.values()))
    bucket: Bucket = field(default_factory=Bucket)
    records: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {"Customer": [], "Order": [], "Product": []}
    )
    faults: list[Fault] = field(default_factory=list)
    removed_fields: set[str] = field(default_factory=set)
    throttled: int = 0
    queries: list[dict[str, Any]] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1001))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def set_bucket(self, maximum: float, restore_rate: float) -> None:
        self.bucket = Bucket(maximum=maximum, restore_rate=restore_rate, available=maximum)

    def drain(self) -> None:
        """Empty the bucket, as another client of the same app would."""
        with self._lock:
            self.bucket.available = 0
            self.bucket.at = time.monotonic()

    def remove_field(self, type_and_field: str) -> None:
        self.removed_fields.add(type_and_field)

    def fail(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def add_customer(self, email: str, *, updated: datetime, orders: int = 0) -> dict[str, Any]:
        return self._add(
            "Customer",
            updated,
            {
                "firstName": "Grace",
                "lastName": "Hopper",
                "defaultEmailAddress": {"emailAddress": email},
                "defaultPhoneNumber": {"phoneNumber": "+14155550100"},
                "numberOfOrders": str(orders),
                "amountSpent": _money("120.50"),
            },
        )

    def add_product(self, title: str, *, updated: datetime, price: str = "19.00") -> dict[str, Any]:
        handle = title.lower().replace(" ", "-")
        variant = {"id": f"gid://shopify/ProductVariant/{next(self._ids)}", "sku": f"SKU-{handle}"}
        return self._add(
            "Product",
            updated,
            {
                "title": title,
                "handle": handle,
                "status": "ACTIVE",
                "totalInventory": 12,
                "onlineStoreUrl": f"https://peer-shop.example/products/{handle}",
                "priceRangeV2": {
                    "minVariantPrice": _money(price),
                    "maxVariantPrice": _money(price),
                },
                "variants": _connection([variant]),
            },
        )

    def add_order(
        self,
        *,
        updated: datetime,
        line_items: int = 1,
        financial: str = "PAID",
        fulfillment: str = "UNFULFILLED",
        customer: dict[str, Any] | None = None,
        product: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        items = [
            {
                "id": f"gid://shopify/LineItem/{next(self._ids)}",
                "name": f"Item {i}",
                "sku": f"SKU-{i}",
                "quantity": 1,
                "originalUnitPriceSet": _bag("10.00"),
                "discountedTotalSet": _bag("9.00"),
                "product": product,
                "variant": None,
            }
            for i in range(line_items)
        ]
        total = f"{9 * line_items:.2f}"
        order = self._add(
            "Order",
            updated,
            {
                "email": "buyer@example.com",
                "cancelledAt": None,
                "displayFinancialStatus": financial,
                "displayFulfillmentStatus": fulfillment,
                "currencyCode": "EUR",
                "totalPriceSet": _bag(total),
                "subtotalPriceSet": _bag(total),
                "customer": customer,
                "lineItems": _connection(items),
            },
        )
        order["name"] = f"#{order['id'].rsplit('/', 1)[1]}"
        return order

    def _add(self, kind: str, updated: datetime, record: dict[str, Any]) -> dict[str, Any]:
        record = {
            "id": f"gid://shopify/{kind}/{next(self._ids)}",
            **record,
            "createdAt": _iso(updated - timedelta(days=2)),
            "updatedAt": _iso(updated),
        }
        self.records[kind].append(record)
        return record


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _money(amount: str) -> dict[str, str]:
    return {"amount": amount, "currencyCode": "EUR"}


def _bag(amount: str) -> dict[str, Any]:
    return {"shopMoney": _money(amount), "presentmentMoney": _money(amount)}


def _connection(items: list[dict[str, Any]]) -> Any:
    """A connection field: graphql-core calls it with the field's arguments."""

    def resolve(_info: Any, first: int | None = None, after: str | None = None) -> dict[str, Any]:
        start = int(_decode(after)["i"]) + 1 if after else 0
        chunk = items[start : start + (first or 50)]
        end = start + len(chunk) - 1
        return {
            "nodes": chunk,
            "pageInfo": {
                "hasNextPage": start + len(chunk) < len(items),
                "hasPreviousPage": start > 0,
                "endCursor": _encode({"i": end}) if chunk else None,
                "startCursor": _encode({"i": start}) if chunk else None,
            },
        }

    return resolve


def _encode(state: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(state).encode()).decode()


def _decode(cursor: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(cursor))
    return decoded


_UPDATED = re.compile(r"^updated_at:(>=?)'([^']+)'$")


def _listing(peer: ShopifyPeer, kind: str) -> Any:
    def resolve(
        _info: Any,
        first: int | None = None,
        after: str | None = None,
        query: str | None = None,
        sortKey: str = "ID",
        reverse: bool = False,
    ) -> dict[str, Any]:
        if first is None or not 1 <= first <= 250:
            raise GraphQLError("The first argument must be between 1 and 250")
        records = list(peer.records[kind])
        if query:
            match = _UPDATED.match(query.strip())
            if match is None:
                raise GraphQLError(f"the peer does not support the search {query!r}")
            op, raw = match.groups()
            since = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            records = [
                r
                for r in records
                if (moment := datetime.fromisoformat(r["updatedAt"].replace("Z", "+00:00"))) > since
                or (op == ">=" and moment == since)
            ]

        def key(record: dict[str, Any]) -> tuple[str, int]:
            number = int(record["id"].rsplit("/", 1)[1])
            return (record["updatedAt"] if sortKey == "UPDATED_AT" else "", number)

        records.sort(key=key, reverse=reverse)
        if after:
            last = tuple(_decode(after)["k"])
            records = [r for r in records if (key(r) < last if reverse else key(r) > last)]
        chunk = records[:first]
        return {
            "nodes": chunk,
            "pageInfo": {
                "hasNextPage": len(records) > first,
                "hasPreviousPage": after is not None,
                "endCursor": _encode({"k": list(key(chunk[-1]))}) if chunk else None,
                "startCursor": _encode({"k": list(key(chunk[0]))}) if chunk else None,
            },
        }

    return resolve


def _single(peer: ShopifyPeer, kind: str) -> Any:
    def resolve(_info: Any, id: str) -> dict[str, Any] | None:
        return next((r for r in peer.records[kind] if r["id"] == id), None)

    return resolve


def _schema(removed: set[str]) -> GraphQLSchema:
    text = SCHEMA
    for entry in removed:
        type_name, field_name = entry.split(".")
        block = re.search(rf"type {type_name} {{\n(.*?)\n}}", text, re.S)
        assert block is not None, entry
        kept = "\n".join(
            line for line in block.group(1).splitlines() if not line.strip().startswith(field_name)
        )
        text = text.replace(block.group(0), f"type {type_name} {{\n{kept}\n}}")
    return build_schema(text)


def query_cost(schema: GraphQLSchema, operation: OperationDefinitionNode, variables: Any) -> int:
    """Shopify's requested cost: objects 1, scalars and enums 0, connections 2 + first x node."""

    def selection_cost(parent: GraphQLObjectType, selection: SelectionSetNode | None) -> int:
        if selection is None:
            return 0
        total = 0
        for node in selection.selections:
            if not isinstance(node, FieldNode):
                continue
            definition = parent.fields.get(node.name.value)
            if definition is None:
                continue
            named = get_named_type(definition.type)
            if not isinstance(named, GraphQLObjectType):
                continue
            inner = selection_cost(named, node.selection_set)
            if named.name.endswith("Connection"):
                first = 0
                for argument in node.arguments or ():
                    if argument.name.value == "first":
                        first = int(value_from_ast_untyped(argument.value, variables) or 0)
                nodes_cost = 0
                for sub in node.selection_set.selections if node.selection_set else ():
                    if isinstance(sub, FieldNode) and sub.name.value == "nodes":
                        node_type = get_named_type(named.fields["nodes"].type)
                        assert isinstance(node_type, GraphQLObjectType)
                        nodes_cost = 1 + selection_cost(node_type, sub.selection_set)
                    elif isinstance(sub, FieldNode) and sub.name.value == "pageInfo":
                        total += 1
                total += 2 + first * nodes_cost
            else:
                total += 1 + inner
        return total

    assert schema.query_type is not None
    return selection_cost(schema.query_type, operation.selection_set)


def build_app(peer: ShopifyPeer) -> Starlette:
    async def graphql(request: Request) -> Response:
        if request.path_params["version"] != API_VERSION:
            return JSONResponse({"errors": "Not Found"}, status_code=404)
        if request.headers.get("x-shopify-access-token") != ACCESS_TOKEN:
            return JSONResponse({"errors": _INVALID_TOKEN}, status_code=401)
        if peer.faults:
            fault = peer.faults.pop(0)
            return JSONResponse(fault.body, status_code=fault.status, headers=fault.headers)
        payload = await request.json()
        peer.queries.append(payload)
        variables = payload.get("variables") or {}
        schema = _schema(peer.removed_fields)
        try:
            document = parse(payload["query"])
        except GraphQLError as exc:
            return JSONResponse({"errors": [_error(exc, "syntaxError")]})
        invalid = validate(schema, document)
        if invalid:
            return JSONResponse({"errors": [_validation_error(e) for e in invalid]})
        operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
        cost = query_cost(schema, operation, variables)
        with peer._lock:
            peer.bucket.refill()
            extensions = {
                "cost": {
                    "requestedQueryCost": cost,
                    "actualQueryCost": None,
                    "throttleStatus": peer.bucket.status(),
                }
            }
            if cost > peer.bucket.maximum:
                return JSONResponse(
                    {
                        "errors": [
                            {
                                "message": f"Query cost is {cost}, which exceeds the single "
                                f"query max cost limit ({int(peer.bucket.maximum)}).",
                                "extensions": {"code": "MAX_COST_EXCEEDED", "cost": cost},
                            }
                        ],
                        "extensions": extensions,
                    }
                )
            if cost > peer.bucket.available:
                peer.throttled += 1
                return JSONResponse(
                    {
                        "errors": [
                            {
                                "message": "Throttled",
                                "extensions": {
                                    "code": "THROTTLED",
                                    "documentation": "https://shopify.dev/api/usage/limits",
                                },
                            }
                        ],
                        "extensions": extensions,
                    }
                )
            peer.bucket.available -= cost
            extensions["cost"]["actualQueryCost"] = cost
            extensions["cost"]["throttleStatus"] = peer.bucket.status()
        denied = [
            field.name.value
            for field in operation.selection_set.selections
            if isinstance(field, FieldNode)
            and _SCOPES.get(field.name.value, "") not in peer.scopes | {""}
        ]
        if denied:
            name = denied[0]
            return JSONResponse(
                {
                    "data": {name: None},
                    "errors": [
                        {
                            "message": f"Access denied for {name} field. Required access: "
                            f"`{_SCOPES[name]}` access scope.",
                            "extensions": {"code": "ACCESS_DENIED"},
                            "path": [name],
                        }
                    ],
                    "extensions": extensions,
                }
            )
        root = {
            "shop": {
                "id": "gid://shopify/Shop/1",
                "name": "Peer Shop",
                "myshopifyDomain": "peer-shop.myshopify.com",
                "currencyCode": "EUR",
            },
            "customers": _listing(peer, "Customer"),
            "customer": _single(peer, "Customer"),
            "orders": _listing(peer, "Order"),
            "order": _single(peer, "Order"),
            "products": _listing(peer, "Product"),
            "product": _single(peer, "Product"),
        }
        result = execute_sync(schema, document, root_value=root, variable_values=variables)
        body: dict[str, Any] = {"data": result.data, "extensions": extensions}
        if result.errors:
            body["errors"] = [_error(e, "INTERNAL_SERVER_ERROR") for e in result.errors]
        return JSONResponse(body)

    return Starlette(routes=[Route("/admin/api/{version}/graphql.json", graphql, methods=["POST"])])


def _error(error: GraphQLError, code: str) -> dict[str, Any]:
    return {"message": error.message, "extensions": {"code": code}, "path": error.path}


_UNDEFINED = re.compile(r"Cannot query field '(\w+)' on type '(\w+)'")


def _validation_error(error: GraphQLError) -> dict[str, Any]:
    match = _UNDEFINED.search(error.message)
    if match is None:
        return _error(error, "GRAPHQL_VALIDATION_FAILED")
    field_name, type_name = match.groups()
    # Shopify's wording and extensions for a field the version does not have.
    return {
        "message": f"Field '{field_name}' doesn't exist on type '{type_name}'",
        "locations": [{"line": loc.line, "column": loc.column} for loc in error.locations or []],
        "extensions": {"code": "undefinedField", "typeName": type_name, "fieldName": field_name},
    }


@pytest.fixture
def shopify_peer() -> Iterator[ShopifyPeer]:
    """A fresh store per test, served on a loopback port."""
    peer = ShopifyPeer()
    with serve(build_app(peer)) as url:
        peer.url = url
        yield peer
