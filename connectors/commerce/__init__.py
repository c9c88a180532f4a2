"""The commerce port: a tenant's shop (customers, orders, products), read for sync and display.

Vendor modules (``connectors/commerce/<vendor>.py``) implement :class:`CommercePort`.
Identifiers are the vendor's, as strings. Listings take ``updated_since`` for incremental sync:
everything changed at or after that moment, oldest first where the vendor can order so; a sync
keeps the largest ``updated_at`` it saw as the next run's ``updated_since``.

Money is :class:`~decimal.Decimal` with an ISO currency code: never floats.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal, Protocol

from pydantic import BaseModel, Field

# The sync listing's query and page live with the other ports' models; commerce modules and
# their callers import them from here too.
from connectors.ports import Connector, SyncPage, SyncQuery

#: The port's order status; ``vendor_status`` keeps the vendor's own words.
OrderStatus = Literal["pending", "paid", "fulfilled", "cancelled", "refunded", "failed"]
ProductStatus = Literal["active", "draft", "archived"]


class Customer(BaseModel):
    id: str
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    orders_count: int | None = None
    total_spent: Decimal | None = None
    currency: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class LineItem(BaseModel):
    id: str
    name: str
    product_id: str | None = None
    variant_id: str | None = None
    sku: str | None = None
    quantity: int = Field(ge=0)
    unit_price: Decimal | None = None
    total: Decimal | None = None


class Order(BaseModel):
    id: str
    number: str = Field(description="what the shop shows the customer (#1001)")
    status: OrderStatus
    vendor_status: str
    currency: str
    total: Decimal
    subtotal: Decimal | None = None
    customer_id: str | None = None
    email: str | None = None
    line_items: list[LineItem] = []
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Product(BaseModel):
    id: str
    title: str
    slug: str | None = None
    status: ProductStatus
    sku: str | None = None
    price: Decimal | None = None
    currency: str | None = None
    inventory_quantity: int | None = None
    url: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class CommercePort(Connector, Protocol):
    """A shop's records, read-only."""

    async def list_customers(self, query: SyncQuery) -> SyncPage[Customer]: ...

    async def get_customer(self, customer_id: str) -> Customer: ...

    async def list_orders(self, query: SyncQuery) -> SyncPage[Order]: ...

    async def get_order(self, order_id: str) -> Order: ...

    async def list_products(self, query: SyncQuery) -> SyncPage[Product]: ...

    async def get_product(self, product_id: str) -> Product: ...


__all__ = [
    "CommercePort",
    "Customer",
    "LineItem",
    "Order",
    "OrderStatus",
    "Product",
    "ProductStatus",
    "SyncPage",
    "SyncQuery",
]
