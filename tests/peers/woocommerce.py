"""A WooCommerce peer: the slice of the WooCommerce REST API v3 the connector reads, over HTTP.

What it follows, and where WooCommerce documents it
(https://woocommerce.github.io/woocommerce-rest-api-docs/):

- **Auth** (#authentication-over-https): HTTP Basic with the consumer key as user name and the
  consumer secret as password. No credentials: 401 ``woocommerce_rest_cannot_view`` ("Sorry,
  you cannot list resources."); an unknown key: 401 ``woocommerce_rest_authentication_error``
  ("Consumer key is invalid."); a wrong secret: the same code, "Consumer secret is invalid.".
  The peer accepts Basic over plain http as a real store does behind https.
- **Index**: ``GET /wp-json/`` is public and names the site (WordPress's REST index).
- **Collections** (#list-all-customers, #list-all-orders, #list-all-products): ``page``,
  ``per_page`` (1-100, otherwise 400 ``rest_invalid_param``), ``orderby``/``order``,
  ``modified_after`` with ``dates_are_gmt`` (orders and products only: customers have no date
  filter), products' ``status=any``; answers carry ``X-WP-Total``, ``X-WP-TotalPages`` and a
  ``Link`` header (#pagination); a page past the end is an empty list.
- **Records**: ``GET /{id}``; an unknown id is 404 (``woocommerce_rest_invalid_id`` for
  customers, ``woocommerce_rest_shop_order_invalid_id`` for orders,
  ``woocommerce_rest_product_invalid_id`` for products) in WordPress's error shape
  ``{"code", "message", "data": {"status"}}`` (#errors). Dates are ISO 8601 without a zone
  (``date_modified_gmt`` is UTC); money amounts are strings, line-item ``price`` a number.
- **Faults**: wc/v3 has no rate limit of its own; hosts, CDNs and security plugins in front of
  stores answer 429 with ``Retry-After`` and 5xx. A test queues such answers, or a change of
  shape (a field dropped from every record), for the next requests.

Use it with ``pytest_plugins = ["tests.peers.woocommerce"]`` (PYTEST_DONT_REWRITE: test
modules import it before pytest loads it as a plugin).
"""

from __future__ import annotations

import base64
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.peers.asgi import serve

CONSUMER_KEY = "ck_0123456789abcdef0123456789abcdef01234567"
CONSUMER_SECRET = "cs_76543210fedcba9876543210fedcba9876543210"

_NOT_FOUND = {
    "customers": "woocommerce_rest_invalid_id",
    "orders": "woocommerce_rest_shop_order_invalid_id",
    "products": "woocommerce_rest_product_invalid_id",
}


@dataclass
class Fault:
    """One answer instead of the real one (``status``, ``body``, ``headers``: a 200 without
    the paging headers, say), or (``drop_field``) the real one minus a field."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop_field: str | None = None


@dataclass
class WooCommercePeer:
    url: str = ""
    records: dict[str, dict[int, dict[str, Any]]] = field(
        default_factory=lambda: {"customers": {}, "orders": {}, "products": {}}
    )
    faults: list[Fault] = field(default_factory=list)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(101))

    def fail(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def add_customer(self, email: str, *, modified: datetime, **extra: Any) -> dict[str, Any]:
        return self._add(
            "customers",
            modified,
            {
                "email": email,
                "first_name": extra.pop("first_name", "Ada"),
                "last_name": extra.pop("last_name", "Lovelace"),
                "role": "customer",
                "username": email.split("@")[0],
                "billing": {"email": email, "phone": extra.pop("phone", "+44 20 7946 0000")},
                "shipping": {},
                "is_paying_customer": False,
                "avatar_url": "",
                "meta_data": [],
                **extra,
            },
        )

    def add_order(
        self,
        *,
        modified: datetime,
        status: str = "processing",
        customer_id: int = 0,
        items: Sequence[tuple[str, int, str]] = (),
        currency: str = "EUR",
    ) -> dict[str, Any]:
        line_items: list[dict[str, Any]] = [
            {
                "id": next(self._ids),
                "name": name,
                "product_id": 7,
                "variation_id": 0,
                "quantity": quantity,
                "sku": f"SKU-{name.upper()}",
                "price": float(price),
                "subtotal": f"{float(price) * quantity:.2f}",
                "total": f"{float(price) * quantity:.2f}",
            }
            for name, quantity, price in items
        ]
        total = sum(float(item["total"]) for item in line_items)
        return self._add(
            "orders",
            modified,
            {
                "parent_id": 0,
                "status": status,
                "currency": currency,
                "total": f"{total:.2f}",
                "total_tax": "0.00",
                "customer_id": customer_id,
                "billing": {"email": "buyer@example.com", "phone": ""},
                "line_items": line_items,
                "payment_method": "bacs",
            },
            number=True,
        )

    def add_product(
        self, name: str, *, modified: datetime, price: str = "9.99", **extra: Any
    ) -> dict[str, Any]:
        return self._add(
            "products",
            modified,
            {
                "name": name,
                "slug": name.lower().replace(" ", "-"),
                "permalink": f"{self.url}/product/{name.lower().replace(' ', '-')}/",
                "type": "simple",
                "status": extra.pop("status", "publish"),
                "description": extra.pop("description", f"<p>{name}</p>"),
                "sku": extra.pop("sku", f"SKU-{name.upper()}"),
                "price": price,
                "regular_price": price,
                "stock_quantity": extra.pop("stock_quantity", 5),
                **extra,
            },
        )

    def _add(
        self, kind: str, modified: datetime, record: dict[str, Any], *, number: bool = False
    ) -> dict[str, Any]:
        record_id = next(self._ids)
        created = modified - timedelta(days=1)
        record = {
            "id": record_id,
            **record,
            "date_created": _local(created),
            "date_created_gmt": _gmt(created),
            "date_modified": _local(modified),
            "date_modified_gmt": _gmt(modified),
        }
        if number:
            record["number"] = str(record_id)
        self.records[kind][record_id] = record
        return record


def _gmt(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat()


def _local(moment: datetime) -> str:
    # The store's time zone is UTC+1 here: the non-GMT fields differ, as they do in real shops.
    return (moment.astimezone(UTC) + timedelta(hours=1)).replace(tzinfo=None).isoformat()


def _error(status: int, code: str, message: str, **headers: str) -> Response:
    return JSONResponse(
        {"code": code, "message": message, "data": {"status": status}},
        status_code=status,
        headers=headers,
    )


def build_app(peer: WooCommercePeer) -> Starlette:
    def authenticate(request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return _error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
        key, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        if key != CONSUMER_KEY:
            return _error(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.")
        if secret != CONSUMER_SECRET:
            return _error(
                401, "woocommerce_rest_authentication_error", "Consumer secret is invalid."
            )
        return None

    def next_fault() -> Fault | None:
        return peer.faults.pop(0) if peer.faults else None

    def shaped(record: dict[str, Any], fault: Fault | None) -> dict[str, Any]:
        if fault is not None and fault.drop_field:
            return {k: v for k, v in record.items() if k != fault.drop_field}
        return record

    async def index(request: Request) -> Response:
        return JSONResponse(
            {"name": "Peer Shop", "description": "", "url": peer.url, "namespaces": ["wc/v3"]}
        )

    async def collection(request: Request) -> Response:
        kind = request.path_params["kind"]
        peer.requests.append((request.url.path, dict(request.query_params)))
        if kind not in peer.records:
            return _error(404, "rest_no_route", "No route was found matching the URL.")
        refused = authenticate(request)
        if refused is not None:
            return refused
        fault = next_fault()
        if fault is not None and fault.drop_field is None:
            return JSONResponse(fault.body, status_code=fault.status, headers=fault.headers)
        params = request.query_params
        try:
            page = int(params.get("page", "1"))
            per_page = int(params.get("per_page", "10"))
        except ValueError:
            return _error(400, "rest_invalid_param", "Invalid parameter(s): page")
        if not 1 <= per_page <= 100:
            return _error(
                400,
                "rest_invalid_param",
                "Invalid parameter(s): per_page (per_page must be between 1 (inclusive) "
                "and 100 (inclusive))",
            )
        records = list(peer.records[kind].values())
        if kind == "products" and params.get("status", "any") != "any":
            records = [r for r in records if r["status"] == params["status"]]
        since = params.get("modified_after")
        if since is not None and kind != "customers":
            # dates_are_gmt=true compares with the GMT dates; otherwise with the local ones.
            column = (
                "date_modified_gmt" if params.get("dates_are_gmt") == "true" else "date_modified"
            )
            records = [r for r in records if r[column] > since]
        key = {"id": "id", "modified": "date_modified_gmt", "date": "date_created_gmt"}.get(
            params.get("orderby", "date"), "id"
        )
        records.sort(key=lambda r: (r[key], r["id"]), reverse=params.get("order") != "asc")
        total = len(records)
        pages = max(1, math.ceil(total / per_page)) if total else 0
        chunk = records[(page - 1) * per_page : page * per_page]
        headers = {"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)}
        links = []
        base = f"{peer.url}{request.url.path}"
        if page < pages:
            links.append(f'<{base}?{urlencode({**params, "page": page + 1})}>; rel="next"')
        if page > 1:
            links.append(f'<{base}?{urlencode({**params, "page": page - 1})}>; rel="prev"')
        if links:
            headers["Link"] = ", ".join(links)
        return JSONResponse([shaped(r, fault) for r in chunk], headers=headers)

    async def record(request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in peer.records:
            return _error(404, "rest_no_route", "No route was found matching the URL.")
        refused = authenticate(request)
        if refused is not None:
            return refused
        fault = next_fault()
        if fault is not None and fault.drop_field is None:
            return JSONResponse(fault.body, status_code=fault.status, headers=fault.headers)
        found = peer.records[kind].get(int(request.path_params["id"]))
        if found is None:
            return _error(404, _NOT_FOUND[kind], "Invalid ID.")
        return JSONResponse(shaped(found, fault))

    return Starlette(
        routes=[
            Route("/wp-json/", index),
            Route("/wp-json/wc/v3/{kind}", collection),
            Route("/wp-json/wc/v3/{kind}/{id:int}", record),
        ]
    )


@pytest.fixture
def woocommerce_peer() -> Iterator[WooCommercePeer]:
    """A fresh store per test, served on a loopback port."""
    peer = WooCommercePeer()
    with serve(build_app(peer)) as url:
        peer.url = url
        yield peer
