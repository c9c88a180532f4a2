"""The Stripe peer: localstripe on loopback, and Stripe-signed events for what it lacks.

Use it from a test module with ``pytest_plugins = ["tests.peers_stripe"]``; test modules also
import its helpers, before pytest loads it as a plugin, hence PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from aiohttp import web
from pydantic import SecretStr

from connectors.billing.stripe_gateway import stripe_connection
from core.settings import Settings
from tests.conftest import free_port

SECRET_KEY = "sk_test_bizosaas"
WEBHOOK_SECRET = "whsec_bizosaas_tests"
WEBHOOK_NAME = "bizosaas"
# A card that attaches and is then declined on every charge (localstripe and Stripe alike).
DECLINING_CARD = "4000000000000341"
_SERVE = (
    "from aiohttp import web; from localstripe.server import app; "
    "web.run_app(app, host='127.0.0.1', port={port}, print=None)"
)


@dataclass
class LocalStripe:
    """A running localstripe: its URL, an SDK client, and its test-only ``/_config`` API."""

    url: str
    process: subprocess.Popen[bytes]

    def sdk(self) -> AbstractAsyncContextManager[stripe.StripeClient]:
        """The SDK client the project builds, pointed here (for what a test does itself)."""
        return stripe_connection(self.settings(Settings(_env_file=None)))

    async def reset(self) -> None:
        """Forget every object; deliver webhooks nowhere."""
        async with httpx.AsyncClient(base_url=self.url) as http:
            (await http.delete("/_config/data")).raise_for_status()
        await self.send_webhooks_to(None)

    async def send_webhooks_to(self, url: str | None, secret: str = WEBHOOK_SECRET) -> None:
        """Deliver every event to ``url`` signed with ``secret`` (``None``: to nobody)."""
        body: dict[str, Any] = {"url": url or "http://127.0.0.1:9/", "secret": secret}
        if url is None:
            body["events"] = []
        async with httpx.AsyncClient(base_url=self.url) as http:
            response = await http.post(f"/_config/webhooks/{WEBHOOK_NAME}", json=body)
            response.raise_for_status()

    def settings(self, settings: Settings) -> Settings:
        """``settings`` pointed at this localstripe, with the tests' webhook secret."""
        return settings.model_copy(
            update={
                "stripe_secret_key": SecretStr(SECRET_KEY),
                "stripe_api_base": self.url,
                "stripe_webhook_secret": SecretStr(WEBHOOK_SECRET),
            }
        )


def _wait_until_serving(url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError(f"localstripe exited with {process.returncode}")
        try:
            httpx.get(f"{url}/v1/customers", auth=(SECRET_KEY, ""), timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("localstripe did not start")


@pytest.fixture(scope="session")
def localstripe_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStripe]:
    """localstripe in a subprocess on a free loopback port, stopped by pid at the end."""
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("localstripe")
    log = (workdir / "localstripe.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVE.format(port=port)],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(url, process)
        yield LocalStripe(url=url, process=process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
async def localstripe(localstripe_server: LocalStripe) -> AsyncIterator[LocalStripe]:
    """The session's localstripe, emptied for this test."""
    await localstripe_server.reset()
    yield localstripe_server
    await localstripe_server.send_webhooks_to(None)


# --- Events signed as Stripe signs them ---------------------------------------------------


def stripe_event(event_type: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
    """An event in Stripe's published shape around ``obj``."""
    return {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def signed(
    payload: dict[str, Any], secret: str = WEBHOOK_SECRET, at: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers Stripe would send: ``t=T,v1=hex(hmac_sha256(secret, "T.body"))``."""
    body = json.dumps(payload, indent=2).encode()
    timestamp = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": f"t={timestamp},v1={digest.hexdigest()}",
    }
    return body, headers


# --- What a customer does in Stripe (Checkout, the hosted invoice page) -------------------


async def card_holder(
    sdk: stripe.StripeClient, tenant_id: uuid.UUID, email: str, card: str | None = None
) -> str:
    """A customer of the tenant holding a default card (``pm_card_visa`` unless ``card``), as
    Checkout would leave it. Returns its id."""
    customer = await sdk.v1.customers.create_async(
        params={"email": email, "name": "Acme", "metadata": {"tenant_id": str(tenant_id)}}
    )
    await use_card(sdk, str(customer.id), card)
    return str(customer.id)


async def use_card(sdk: stripe.StripeClient, customer_id: str, card: str | None = None) -> None:
    """Attach a card and make it the customer's default."""
    if card is None:
        method_id = "pm_card_visa"
    else:
        created = await sdk.v1.payment_methods.create_async(
            params={
                "type": "card",
                "card": {"number": card, "exp_month": 12, "exp_year": 2040, "cvc": "123"},
            }
        )
        method_id = str(created.id)
    method = await sdk.v1.payment_methods.attach_async(method_id, params={"customer": customer_id})
    await sdk.v1.customers.update_async(
        customer_id, params={"invoice_settings": {"default_payment_method": str(method.id)}}
    )


async def unpaid_invoice(sdk: stripe.StripeClient, customer_id: str, subscription_id: str) -> str:
    """A renewal invoice of the subscription whose payment the declining card fails."""
    await use_card(sdk, customer_id, DECLINING_CARD)
    await sdk.v1.invoice_items.create_async(
        params={
            "customer": customer_id,
            "amount": 2900,
            "currency": "usd",
            "subscription": subscription_id,
        }
    )
    invoice = await sdk.v1.invoices.create_async(
        params={"customer": customer_id, "subscription": subscription_id}
    )
    attempted = await sdk.v1.invoices.pay_async(str(invoice.id))
    assert attempted.status == "open"
    return str(invoice.id)


async def pay(sdk: stripe.StripeClient, customer_id: str, invoice_id: str) -> dict[str, Any]:
    """Pay the invoice with a good card; returns the paid invoice object."""
    await use_card(sdk, customer_id)
    paid = await sdk.v1.invoices.pay_async(invoice_id)
    assert paid.status == "paid"
    return paid.to_dict()


async def confirm_card_setup(
    sdk: stripe.StripeClient, setup_intent_id: str, client_secret: str
) -> dict[str, Any]:
    """What Stripe.js ``confirmCardSetup`` does in the browser with the SetupIntent's client
    secret (a wrong one is refused) and a good card; returns the succeeded SetupIntent."""
    confirmed = await sdk.v1.setup_intents.confirm_async(
        setup_intent_id,
        # The browser's call carries the client secret; the server SDK's types omit it.
        params={"payment_method": "pm_card_visa", "client_secret": client_secret},  # type: ignore[arg-type]
    )
    assert confirmed.status == "succeeded"
    return confirmed.to_dict()


# --- Meter events: Stripe's published answer, for what localstripe lacks ------------------


@dataclass
class MeterRecorder:
    """Answers ``POST /v1/billing/meter_events`` as Stripe documents it; keeps each request."""

    url: str
    received: list[dict[str, str]]

    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(
            update={"stripe_secret_key": SecretStr(SECRET_KEY), "stripe_api_base": self.url}
        )


@pytest.fixture
async def meter_recorder() -> AsyncIterator[MeterRecorder]:
    received: list[dict[str, str]] = []

    async def create(request: web.Request) -> web.Response:
        form = await request.post()
        record = {key: str(value) for key, value in form.items()}
        record["idempotency-key"] = request.headers.get("Idempotency-Key", "")
        received.append(record)
        return web.json_response(
            {
                "object": "billing.meter_event",
                "created": int(time.time()),
                "event_name": record["event_name"],
                "identifier": record["identifier"],
                "livemode": False,
                "payload": {
                    "value": record["payload[value]"],
                    "stripe_customer_id": record["payload[stripe_customer_id]"],
                },
                "timestamp": int(record["timestamp"]),
            }
        )

    meters: dict[str, dict[str, str]] = {}

    async def create_meter(request: web.Request) -> web.Response:
        form = await request.post()
        name = str(form["event_name"])
        meters.setdefault(
            name, {"id": f"mtr_{name}", "object": "billing.meter", "event_name": name}
        )
        return web.json_response(meters[name] | {"status": "active"})

    async def list_meters(_: web.Request) -> web.Response:
        data = [meter | {"status": "active"} for meter in meters.values()]
        return web.json_response({"object": "list", "data": data, "has_more": False})

    app = web.Application()
    app.router.add_post("/v1/billing/meter_events", create)
    app.router.add_post("/v1/billing/meters", create_meter)
    app.router.add_get("/v1/billing/meters", list_meters)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield MeterRecorder(url=f"http://127.0.0.1:{port}", received=received)
    await runner.cleanup()


# --- Refunds, disputes, credit notes: localstripe refunds; Stripe's shapes for the rest ------


async def paid_charge(sdk: stripe.StripeClient, subscription_id: str) -> tuple[str, dict[str, Any]]:
    """The subscription's first invoice (paid when it was created) and the charge that paid
    it: ``(invoice_id, charge)``."""
    subscription = (await sdk.v1.subscriptions.retrieve_async(subscription_id)).to_dict()
    latest = subscription["latest_invoice"]
    invoice_id = str(latest["id"] if isinstance(latest, dict) else latest)
    invoice = (await sdk.v1.invoices.retrieve_async(invoice_id)).to_dict()
    assert invoice["status"] == "paid", invoice["status"]
    # localstripe names the charge on the invoice (Stripe before API version 2025-03-31 too).
    charge = invoice["charge"]
    charge_id = charge["id"] if isinstance(charge, dict) else str(charge)
    return invoice_id, (await sdk.v1.charges.retrieve_async(charge_id)).to_dict()


async def refund(sdk: stripe.StripeClient, charge_id: str, amount: int) -> dict[str, Any]:
    """Refund ``amount`` of the charge in localstripe; returns the charge as it is after."""
    await sdk.v1.refunds.create_async(params={"charge": charge_id, "amount": amount})
    return (await sdk.v1.charges.retrieve_async(charge_id)).to_dict()


def dispute(
    charge: dict[str, Any], *, status: str = "needs_response", reason: str = "fraudulent"
) -> dict[str, Any]:
    """A dispute of the whole charge in Stripe's published shape
    (https://docs.stripe.com/api/disputes/object; localstripe has no disputes)."""
    now = int(time.time())
    return {
        "id": f"dp_{charge['id'][3:]}",
        "object": "dispute",
        "amount": charge["amount"],
        "balance_transactions": [],
        "charge": charge["id"],
        "created": now,
        "currency": charge["currency"],
        "evidence": {},
        "evidence_details": {
            "due_by": now + 7 * 86_400,
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        },
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": charge.get("payment_intent"),
        "reason": reason,
        "status": status,
    }


def credit_note(
    invoice_id: str, customer_id: str, amount: int, *, reason: str = "order_change"
) -> dict[str, Any]:
    """A credit note on the invoice in Stripe's published shape
    (https://docs.stripe.com/api/credit_notes/object; localstripe has no credit notes)."""
    now = int(time.time())
    return {
        "id": f"cn_{uuid.uuid4().hex[:14]}",
        "object": "credit_note",
        "amount": amount,
        "amount_shipping": 0,
        "created": now,
        "currency": "usd",
        "customer": customer_id,
        "customer_balance_transaction": None,
        "discount_amount": 0,
        "discount_amounts": [],
        "effective_at": now,
        "invoice": invoice_id,
        "lines": {"object": "list", "data": [], "has_more": False, "url": "/v1/credit_notes"},
        "livemode": False,
        "memo": None,
        "metadata": {},
        "number": f"CN-{now}",
        "out_of_band_amount": None,
        "pdf": "https://pay.stripe.com/credit_notes/test/pdf",
        "post_payment_amount": amount,
        "pre_payment_amount": 0,
        "reason": reason,
        "refunds": [],
        "shipping_cost": None,
        "status": "issued",
        "subtotal": amount,
        "subtotal_excluding_tax": amount,
        "total": amount,
        "total_excluding_tax": amount,
        "type": "post_payment",
        "voided_at": None,
    }
