"""The :class:`~connectors.billing.BillingGateway` on the real ``stripe`` SDK."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import Any

import stripe

from connectors.billing import (
    ENDED_STATUSES,
    PLAN_KEY,
    TENANT_KEY,
    BillingDeclined,
    BillingGateway,
    BillingRejected,
    BillingUnavailable,
    GatewayOpener,
    charge_snapshot,
    default_payment_method,
    invoice_preview,
    invoice_snapshot,
    payment_method_snapshot,
    subscription_snapshot,
    tenant_of,
)
from core.plans import PlanSpec
from core.settings import Settings
from models.billing import (
    ChargeSnapshot,
    InvoicePreview,
    InvoiceSnapshot,
    PaymentMethodSnapshot,
    SubscriptionSnapshot,
)
from models.onboarding import PlanId

# Error codes Stripe sends (with 429, or 400 on older API versions) for a request that may
# succeed when repeated later: https://docs.stripe.com/error-codes, /rate-limits.
_RETRYABLE_CODES = frozenset({"rate_limit", "lock_timeout"})
# 401/403: a rotated or restricted key that an operator fixes; 409: a concurrent request with
# the same idempotency key; 429: rate limits and lock timeouts.
_RETRYABLE_STATUSES = frozenset({401, 403, 409, 429})


@asynccontextmanager
async def _classified() -> AsyncIterator[None]:
    """Stripe's errors as the port's: declined, rejected (a request error), or unavailable."""
    try:
        yield
    except stripe.CardError as exc:
        raise BillingDeclined(exc.user_message or str(exc), exc.code) from exc
    except stripe.APIConnectionError as exc:
        raise BillingUnavailable(f"Stripe is unreachable: {type(exc).__name__}") from None
    except stripe.StripeError as exc:
        status = exc.http_status
        if (
            status is None
            or status >= 500
            or status in _RETRYABLE_STATUSES
            or exc.code in _RETRYABLE_CODES
        ):
            # Only the status and Stripe's code, and no cause: a 401's message quotes part of
            # the key, and activity failures (causes included) are stored in history.
            raise BillingUnavailable(
                f"Stripe could not serve the request ({status}, {exc.code or type(exc).__name__})"
            ) from None
        raise BillingRejected(f"Stripe refused the request ({status}): {exc}") from exc


def _missing(exc: stripe.StripeError) -> bool:
    return isinstance(exc, stripe.InvalidRequestError) and exc.http_status == 404


def _not_found(exc: BillingRejected) -> bool:
    """Stripe answered 404 (an unknown object, or an API this Stripe-compatible server lacks)."""
    cause = exc.__cause__
    return isinstance(cause, stripe.StripeError) and cause.http_status == 404


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
                if tenant_of(customer.to_dict().get("metadata")) == tenant_id:
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
            if subscription.status not in ENDED_STATUSES:
                return subscription_snapshot(subscription.to_dict(), now)
        return None

    async def create_subscription(
        self,
        customer_id: str,
        price_id: str,
        tenant_id: uuid.UUID,
        trial_end: datetime | None,
        idempotency_key: str,
        quantity: int = 1,
    ) -> SubscriptionSnapshot:
        params: dict[str, Any] = {
            "customer": customer_id,
            "items": [{"plan": price_id, "quantity": quantity}],
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

    async def fetch_charge(self, charge_id: str) -> ChargeSnapshot | None:
        try:
            async with _classified():
                found = await self._client.v1.charges.retrieve_async(charge_id)
        except BillingRejected as exc:
            if _not_found(exc):
                return None
            raise
        charge = charge_snapshot(found.to_dict())
        if charge.invoice_id is None and charge.payment_intent_id is not None:
            invoice_id = await self._invoice_paid_by(charge.payment_intent_id)
            charge = charge.model_copy(update={"invoice_id": invoice_id})
        return charge

    async def _invoice_paid_by(self, payment_intent_id: str) -> str | None:
        """The invoice a PaymentIntent paid: named on the PaymentIntent before API version
        2025-03-31 (and by localstripe), listed as an invoice payment since."""
        async with _classified():
            intent = await self._client.v1.payment_intents.retrieve_async(payment_intent_id)
        invoice = intent.to_dict().get("invoice")
        if invoice:
            return str(invoice["id"] if isinstance(invoice, Mapping) else invoice)
        try:
            async with _classified():
                payments = await self._client.v1.invoice_payments.list_async(
                    params={
                        "payment": {"type": "payment_intent", "payment_intent": payment_intent_id},
                        "limit": 1,
                    }
                )
        except BillingRejected as exc:
            if _not_found(exc):  # a Stripe-compatible server without invoice payments
                return None
            raise
        for payment in payments.data:
            paid = payment.invoice
            return paid if isinstance(paid, str) else str(paid.id)
        return None

    async def update_subscription(
        self,
        subscription: SubscriptionSnapshot,
        idempotency_key: str,
        *,
        price_id: str | None = None,
        cancel_at_period_end: bool | None = None,
        trial_end: datetime | None = None,
        prorate: bool = True,
        quantity: int | None = None,
    ) -> SubscriptionSnapshot:
        # Stripe prorates a change of plan or quantity by default.
        params: dict[str, Any] = {}
        if trial_end is not None:
            params["trial_end"] = int(trial_end.timestamp())
        if price_id is not None or quantity is not None:
            item: dict[str, Any] = {"id": subscription.item_id}
            if price_id is not None:
                item["plan"] = price_id
            item["quantity"] = quantity if quantity is not None else subscription.quantity
            params["items"] = [item]
            if not prorate:
                params["proration_behavior"] = "none"
        if cancel_at_period_end is not None:
            params["cancel_at_period_end"] = cancel_at_period_end
        async with _classified():
            updated = await self._client.v1.subscriptions.update_async(
                subscription.subscription_id,
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            )
        return subscription_snapshot(updated.to_dict(), _now())

    async def preview_plan_change(
        self,
        subscription: SubscriptionSnapshot,
        plan: PlanId,
        price_id: str,
        *,
        prorate: bool,
        quantity: int = 1,
    ) -> InvoicePreview:
        details: dict[str, Any] = {
            "items": [{"id": subscription.item_id, "plan": price_id, "quantity": quantity}],
            "proration_behavior": "create_prorations" if prorate else "none",
        }
        if prorate:
            details["proration_date"] = _now()
        async with _classified():
            preview = await self._client.v1.invoices.create_preview_async(
                params={
                    "customer": subscription.customer_id,
                    "subscription": subscription.subscription_id,
                    "subscription_details": details,
                },  # type: ignore[arg-type]
            )
        # Prorations go on the next invoice, as does the new price: both at the period's end.
        return invoice_preview(preview.to_dict(), plan, subscription.current_period_end)

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

    async def ensure_meters(self, meters: Mapping[str, str]) -> None:
        async with _classified():
            found = await self._client.v1.billing.meters.list_async(
                params={"status": "active", "limit": 100}
            )
            active = {meter.event_name for meter in found.data}
            for event_name, formula in meters.items():
                if event_name in active:
                    continue
                await self._client.v1.billing.meters.create_async(
                    params={
                        "display_name": event_name,
                        "event_name": event_name,
                        "default_aggregation": {"formula": formula},
                    },
                    options={"idempotency_key": f"meter:{event_name}"},
                )

    async def create_setup_intent(self, customer_id: str, idempotency_key: str) -> tuple[str, str]:
        async with _classified():
            created = await self._client.v1.setup_intents.create_async(
                params={"customer": customer_id, "usage": "off_session"},
                options={"idempotency_key": idempotency_key},
            )
        assert created.client_secret is not None
        return str(created.id), created.client_secret

    async def set_default_payment_method(
        self, customer_id: str, payment_method_id: str, idempotency_key: str
    ) -> None:
        async with _classified():
            method = await self._client.v1.payment_methods.retrieve_async(payment_method_id)
            holder = method.customer
            if (holder if isinstance(holder, str) or holder is None else holder.id) != customer_id:
                await self._client.v1.payment_methods.attach_async(
                    payment_method_id,
                    params={"customer": customer_id},
                    options={"idempotency_key": f"{idempotency_key}:attach"},
                )
            await self._client.v1.customers.update_async(
                customer_id,
                params={"invoice_settings": {"default_payment_method": payment_method_id}},
                options={"idempotency_key": f"{idempotency_key}:default"},
            )

    async def list_payment_methods(self, customer_id: str) -> list[PaymentMethodSnapshot]:
        async with _classified():
            customer = await self._client.v1.customers.retrieve_async(customer_id)
            found = await self._client.v1.payment_methods.list_async(
                params={"customer": customer_id, "type": "card", "limit": 100}
            )
        default = default_payment_method(customer.to_dict())
        return [payment_method_snapshot(method.to_dict(), default) for method in found.data]

    async def fetch_payment_method(
        self, customer_id: str, payment_method_id: str
    ) -> PaymentMethodSnapshot | None:
        try:
            async with _classified():
                method = await self._client.v1.payment_methods.retrieve_async(payment_method_id)
        except BillingRejected as exc:
            if isinstance(exc.__cause__, stripe.StripeError) and _missing(exc.__cause__):
                return None
            raise
        found = payment_method_snapshot(method.to_dict(), None)
        if found.customer_id != customer_id:
            return found  # another customer's, or nobody's: never anyone's default here
        async with _classified():
            customer = await self._client.v1.customers.retrieve_async(customer_id)
        return payment_method_snapshot(method.to_dict(), default_payment_method(customer.to_dict()))

    async def detach_payment_method(self, payment_method_id: str, idempotency_key: str) -> None:
        async with _classified():
            await self._client.v1.payment_methods.detach_async(
                payment_method_id, options={"idempotency_key": idempotency_key}
            )

    async def open_invoices(self, customer_id: str) -> list[str]:
        async with _classified():
            found = await self._client.v1.invoices.list_async(
                params={"customer": customer_id, "limit": 100}
            )
        open_ones = [invoice for invoice in found.data if invoice.status == "open"]
        return [str(invoice.id) for invoice in sorted(open_ones, key=lambda i: i.created)]

    async def pay_invoice(self, invoice_id: str, idempotency_key: str) -> InvoiceSnapshot:
        async with _classified():
            paid = await self._client.v1.invoices.pay_async(
                invoice_id, options={"idempotency_key": idempotency_key}
            )
        return invoice_snapshot(paid.to_dict(), _now())


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


def gateway_from_settings(settings: Settings) -> GatewayOpener | None:
    """Opens the Stripe gateway; ``None`` without ``BIZ_STRIPE_SECRET_KEY``."""
    if settings.stripe_secret_key is None:
        return None
    return partial(stripe_gateway, settings)
