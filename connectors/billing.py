"""The billing port and its Stripe implementation.

Stripe owns the billing clock; this module hides how Stripe is spoken to: which API shapes
(``current_period_*`` on the subscription before 2025, on its items after; an invoice's
subscription at the top level or under ``parent``), how a plan is priced, and how Stripe's
errors divide into business outcomes (a declined card), refusals (any other 4xx) and faults
worth retrying (connection errors, 429, 5xx: raised unchanged so that activities retry them).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import stripe

from core.plans import PlanSpec
from core.settings import Settings
from models.billing import BillingEvent, InvoiceSnapshot, SubscriptionSnapshot
from models.onboarding import PlanId

# Metadata keys this project sets on Stripe objects.
TENANT_KEY = "tenant_id"
PLAN_KEY = "plan_id"

SUBSCRIPTION_EVENTS = frozenset(
    {
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.trial_will_end",
        "customer.subscription.paused",
        "customer.subscription.resumed",
    }
)
INVOICE_EVENTS = frozenset(
    {
        "invoice.created",
        "invoice.finalized",
        "invoice.updated",
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.payment_failed",
        "invoice.voided",
        "invoice.marked_uncollectible",
    }
)
# A subscription that ended (or never started) stays ended: it is never reused.
_ENDED = frozenset({"canceled", "incomplete_expired"})


class BillingDeclined(Exception):
    """Stripe declined a payment (a business outcome, not a fault)."""

    def __init__(self, message: str, code: str | None) -> None:
        super().__init__(message)
        self.code = code


class BillingRejected(Exception):
    """Stripe refused the request (4xx): retrying the same request cannot succeed."""


class BillingGateway(Protocol):
    """What billing needs from a payment provider."""

    async def ensure_plan(self, plan: PlanSpec) -> str:
        """The provider's price id for ``plan``, created on first use."""
        ...

    async def ensure_customer(
        self, tenant_id: uuid.UUID, name: str, email: str, idempotency_key: str
    ) -> str:
        """The tenant's customer id: found by its tenant id, else created under the key."""
        ...

    async def find_subscription(self, customer_id: str) -> SubscriptionSnapshot | None:
        """The customer's live (not ended) subscription, if any."""
        ...

    async def create_subscription(
        self,
        customer_id: str,
        price_id: str,
        tenant_id: uuid.UUID,
        trial_end: datetime | None,
        idempotency_key: str,
    ) -> SubscriptionSnapshot: ...

    async def fetch_subscription(self, subscription_id: str) -> SubscriptionSnapshot | None: ...

    async def fetch_invoice(self, invoice_id: str) -> InvoiceSnapshot | None: ...

    async def update_subscription(
        self,
        subscription: SubscriptionSnapshot,
        idempotency_key: str,
        *,
        price_id: str | None = None,
        cancel_at_period_end: bool | None = None,
    ) -> SubscriptionSnapshot:
        """Change the plan (prorated) and/or whether it renews."""
        ...

    async def report_usage(
        self,
        event_name: str,
        customer_id: str,
        value: int,
        identifier: str,
        timestamp: datetime,
    ) -> None:
        """Send one meter event; the provider drops a repeated ``identifier``."""
        ...


# --- Stripe's shapes ----------------------------------------------------------------------


def _time(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if value else None


def _id(value: Any) -> str:
    """An id, whether Stripe sent it bare or as an expanded object."""
    return str(value["id"] if isinstance(value, Mapping) else value)


def _tenant(metadata: Mapping[str, Any] | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(str((metadata or {})[TENANT_KEY]))
    except (KeyError, ValueError):
        return None


def _plan(metadata: Mapping[str, Any] | None) -> PlanId | None:
    try:
        return PlanId((metadata or {})[PLAN_KEY])
    except (KeyError, ValueError):
        return None


def subscription_snapshot(obj: Mapping[str, Any], as_of: int) -> SubscriptionSnapshot:
    """A Stripe subscription object (any API version, or localstripe's) as billing sees it."""
    items = (obj.get("items") or {}).get("data") or [{}]
    item = items[0]
    price = item.get("price") or item.get("plan") or obj.get("plan") or {}
    status = str(obj["status"])
    if status == "incomplete" and obj.get("trial_end") and not obj.get("latest_invoice"):
        # localstripe leaves a subscription created with a trial `incomplete` (and issues no
        # invoice); Stripe calls that `trialing`. Stripe's own incomplete ones have an invoice.
        status = "trialing"
    return SubscriptionSnapshot(
        subscription_id=str(obj["id"]),
        customer_id=_id(obj["customer"]),
        item_id=item.get("id"),
        tenant_id=_tenant(obj.get("metadata")),
        plan=_plan(price.get("metadata")),
        stripe_status=status,
        current_period_start=_time(
            item.get("current_period_start") or obj.get("current_period_start")
        ),
        current_period_end=_time(item.get("current_period_end") or obj.get("current_period_end")),
        cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
        trial_end=_time(obj.get("trial_end")),
        as_of=as_of,
    )


def invoice_snapshot(obj: Mapping[str, Any], as_of: int) -> InvoiceSnapshot:
    """A Stripe invoice object (any API version, or localstripe's) as billing sees it."""
    details = (obj.get("parent") or {}).get("subscription_details") or {}
    subscription = obj.get("subscription") or details.get("subscription")
    tenant = _tenant(details.get("metadata")) or _tenant(obj.get("metadata"))
    return InvoiceSnapshot(
        invoice_id=str(obj["id"]),
        customer_id=_id(obj["customer"]),
        subscription_id=_id(subscription) if subscription else None,
        tenant_id=tenant,
        number=obj.get("number"),
        status=str(obj.get("status") or "draft"),
        amount_due=int(obj.get("amount_due") or 0),
        amount_paid=int(obj.get("amount_paid") or 0),
        currency=str(obj.get("currency") or "usd"),
        period_start=_time(obj.get("period_start")),
        period_end=_time(obj.get("period_end")),
        hosted_invoice_url=obj.get("hosted_invoice_url"),
        created=_time(obj.get("created") or obj.get("date")) or datetime.fromtimestamp(as_of, UTC),
        as_of=as_of,
    )


def parse_event(payload: Mapping[str, Any]) -> BillingEvent:
    """A verified event's payload as a :class:`BillingEvent`; types billing does not act on
    keep only their id, type and time."""
    event_type = str(payload["type"])
    created = int(payload["created"])
    obj: Mapping[str, Any] = (payload.get("data") or {}).get("object") or {}
    subscription = invoice = None
    if event_type in SUBSCRIPTION_EVENTS:
        subscription = subscription_snapshot(obj, created)
    elif event_type in INVOICE_EVENTS:
        invoice = invoice_snapshot(obj, created)
    customer = subscription or invoice
    return BillingEvent(
        event_id=str(payload["id"]),
        type=event_type,
        created=created,
        customer_id=customer.customer_id if customer else None,
        subscription=subscription,
        invoice=invoice,
    )


def handles(event: BillingEvent) -> bool:
    """Whether billing acts on this event type."""
    return event.type in SUBSCRIPTION_EVENTS or event.type in INVOICE_EVENTS


# --- Stripe -------------------------------------------------------------------------------


@asynccontextmanager
async def _classified() -> AsyncIterator[None]:
    """Stripe's errors as the port's: declined, rejected, or raised unchanged (transient)."""
    try:
        yield
    except stripe.CardError as exc:
        raise BillingDeclined(exc.user_message or str(exc), exc.code) from exc
    except (stripe.RateLimitError, stripe.APIConnectionError):
        raise
    except stripe.StripeError as exc:
        if exc.http_status is not None and 400 <= exc.http_status < 500:
            raise BillingRejected(f"Stripe refused the request ({exc.http_status}): {exc}") from exc
        raise


def _missing(exc: stripe.StripeError) -> bool:
    return isinstance(exc, stripe.InvalidRequestError) and exc.http_status == 404


def _now() -> int:
    return int(time.time())


class StripeGateway:
    """:class:`BillingGateway` on the real ``stripe`` SDK (``StripeClient``)."""

    def __init__(self, client: stripe.StripeClient) -> None:
        self._client = client

    async def ensure_plan(self, plan: PlanSpec) -> str:
        async with _classified():
            try:
                await self._client.v1.plans.retrieve_async(plan.stripe_plan_id)
                return plan.stripe_plan_id
            except stripe.InvalidRequestError as exc:
                if not _missing(exc):
                    raise
            product_id = f"bizosaas-{plan.id.value}"
            try:
                await self._client.v1.products.retrieve_async(product_id)
            except stripe.InvalidRequestError as exc:
                if not _missing(exc):
                    raise
                await self._client.v1.products.create_async(
                    params={"id": product_id, "name": f"BizOSaaS {plan.name}"},
                    options={"idempotency_key": f"product:{product_id}"},
                )
            await self._client.v1.plans.create_async(
                params={
                    "id": plan.stripe_plan_id,
                    "product": product_id,
                    "amount": plan.amount,
                    "currency": plan.currency,
                    "interval": plan.interval,
                    "metadata": {PLAN_KEY: plan.id.value},
                },
                options={"idempotency_key": f"plan:{plan.stripe_plan_id}"},
            )
        return plan.stripe_plan_id

    async def ensure_customer(
        self, tenant_id: uuid.UUID, name: str, email: str, idempotency_key: str
    ) -> str:
        async with _classified():
            # A list by e-mail is read-after-write consistent (search lags by up to a minute).
            found = await self._client.v1.customers.list_async(
                params={"email": email, "limit": 100}
            )
            for customer in found.data:
                if _tenant(customer.to_dict().get("metadata")) == tenant_id:
                    return str(customer.id)
            created = await self._client.v1.customers.create_async(
                params={"name": name, "email": email, "metadata": {TENANT_KEY: str(tenant_id)}},
                options={"idempotency_key": idempotency_key},
            )
        return str(created.id)

    async def find_subscription(self, customer_id: str) -> SubscriptionSnapshot | None:
        async with _classified():
            found = await self._client.v1.subscriptions.list_async(
                params={"customer": customer_id, "status": "all", "limit": 100}
            )
        now = _now()
        for subscription in found.data:
            if subscription.status not in _ENDED:
                return subscription_snapshot(subscription.to_dict(), now)
        return None

    async def create_subscription(
        self,
        customer_id: str,
        price_id: str,
        tenant_id: uuid.UUID,
        trial_end: datetime | None,
        idempotency_key: str,
    ) -> SubscriptionSnapshot:
        params: dict[str, Any] = {
            "customer": customer_id,
            "items": [{"plan": price_id}],
            "metadata": {TENANT_KEY: str(tenant_id)},
            "payment_behavior": "allow_incomplete",
        }
        if trial_end is not None:
            params["trial_end"] = int(trial_end.timestamp())
        async with _classified():
            created = await self._client.v1.subscriptions.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            )
        return subscription_snapshot(created.to_dict(), _now())

    async def fetch_subscription(self, subscription_id: str) -> SubscriptionSnapshot | None:
        try:
            async with _classified():
                found = await self._client.v1.subscriptions.retrieve_async(subscription_id)
        except BillingRejected as exc:
            if isinstance(exc.__cause__, stripe.StripeError) and _missing(exc.__cause__):
                return None
            raise
        return subscription_snapshot(found.to_dict(), _now())

    async def fetch_invoice(self, invoice_id: str) -> InvoiceSnapshot | None:
        try:
            async with _classified():
                found = await self._client.v1.invoices.retrieve_async(invoice_id)
        except BillingRejected as exc:
            if isinstance(exc.__cause__, stripe.StripeError) and _missing(exc.__cause__):
                return None
            raise
        return invoice_snapshot(found.to_dict(), _now())

    async def update_subscription(
        self,
        subscription: SubscriptionSnapshot,
        idempotency_key: str,
        *,
        price_id: str | None = None,
        cancel_at_period_end: bool | None = None,
    ) -> SubscriptionSnapshot:
        # Stripe prorates a plan change by default (and localstripe knows no other way).
        params: dict[str, Any] = {}
        if price_id is not None:
            params["items"] = [{"id": subscription.item_id, "plan": price_id}]
        if cancel_at_period_end is not None:
            params["cancel_at_period_end"] = cancel_at_period_end
        async with _classified():
            updated = await self._client.v1.subscriptions.update_async(
                subscription.subscription_id,
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            )
        return subscription_snapshot(updated.to_dict(), _now())

    async def report_usage(
        self,
        event_name: str,
        customer_id: str,
        value: int,
        identifier: str,
        timestamp: datetime,
    ) -> None:
        async with _classified():
            await self._client.v1.billing.meter_events.create_async(
                params={
                    "event_name": event_name,
                    "payload": {"stripe_customer_id": customer_id, "value": str(value)},
                    "identifier": identifier,
                    "timestamp": int(timestamp.timestamp()),
                },
                # A resend after a lost answer gets Stripe's first answer back.
                options={"idempotency_key": identifier},
            )


class _HttpxClient(stripe.HTTPXClient):
    """The SDK's httpx transport, handing httpx the encoded form as ``content`` (httpx
    deprecates raw bytes as ``data``)."""

    def _get_request_args_kwargs(  # type: ignore[no-untyped-def]
        self, method: str, url: str, headers: Mapping[str, str], post_data
    ):
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        kwargs["content"] = kwargs.pop("data") or None
        return args, kwargs


def stripe_client(settings: Settings, http: stripe.HTTPClient) -> stripe.StripeClient:
    """The SDK client for the settings over ``http``.

    Temporal retries failed activities, so the SDK does not retry on its own.
    """
    if settings.stripe_secret_key is None:
        raise ValueError("BIZ_STRIPE_SECRET_KEY is not set")
    return stripe.StripeClient(
        settings.stripe_secret_key.get_secret_value(),
        base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else None,
        max_network_retries=0,
        http_client=http,
    )


@asynccontextmanager
async def stripe_connection(settings: Settings) -> AsyncIterator[stripe.StripeClient]:
    """An SDK client whose connections are closed on exit."""
    http = _HttpxClient()
    try:
        yield stripe_client(settings, http)
    finally:
        await http.close_async()  # type: ignore[no-untyped-call]


@asynccontextmanager
async def stripe_gateway(settings: Settings) -> AsyncIterator[BillingGateway]:
    """The Stripe gateway for the settings, for one unit of work."""
    async with stripe_connection(settings) as client:
        yield StripeGateway(client)


GatewayOpener = Callable[[], AbstractAsyncContextManager[BillingGateway]]


def gateway_from_settings(settings: Settings) -> GatewayOpener | None:
    """Opens the Stripe gateway; ``None`` without ``BIZ_STRIPE_SECRET_KEY``."""
    if settings.stripe_secret_key is None:
        return None
    return partial(stripe_gateway, settings)
