"""A Stripe front for tests (PYTEST_DONT_REWRITE: test modules import it before pytest loads it
as a plugin): forwards to localstripe what it serves, and answers itself what
localstripe lacks or cannot be made to do.

- **Meters** (``/v1/billing/meters``, ``/v1/billing/meter_events``) as Stripe documents them
  (https://docs.stripe.com/api/billing/meter and /meter-event): meters are created and listed,
  a meter event needs a known ``event_name``, a customer in its payload and a unique
  ``identifier`` (a repeat is refused, 400, as Stripe does within 24 h); events are kept so
  that a test can read what was billed.
- **No proration** (``proration_behavior=none``), which localstripe ignores: on a subscription
  update the front removes the "Unused time" items localstripe adds, and from an invoice
  preview it removes the proration lines (and their sum from the amount due), as Stripe does
  (https://docs.stripe.com/billing/subscriptions/prorations#disable-prorations).
- **Faults**: a test queues answers (status and Stripe's error body) for the next requests to a
  path, as Stripe sends them on a rotated key (401), a missing permission (403), a concurrent
  request on the same idempotency key (409), a rate limit or lock timeout (429), or an outage
  (500) — see https://docs.stripe.com/error-handling and https://docs.stripe.com/rate-limits.

Use it with ``pytest_plugins = ["tests.peers_stripe", "tests.peers.stripe_front"]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from core.settings import Settings
from tests.conftest import free_port
from tests.peers_stripe import SECRET_KEY, WEBHOOK_SECRET, LocalStripe

_FORWARDED_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "Stripe-Version")


@dataclass
class Fault:
    """One answer in Stripe's error shape."""

    status: int
    type: str = "api_error"
    code: str | None = None
    message: str = "injected by the test"

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
        return {"error": error}


@dataclass
class StripeFront:
    """The running front: its URL, the meter events it accepted, and the fault queue."""

    url: str
    meters: dict[str, dict[str, Any]] = field(default_factory=dict)
    meter_events: list[dict[str, str]] = field(default_factory=list)
    # How many meter-create requests arrived (a client that finds before it creates sends one
    # per missing meter).
    meter_creations: int = 0
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    # Refuse every meter event (as Stripe does for a meter that was deactivated).
    refuse_meter_events: bool = False

    def fail(self, path_prefix: str, *faults: Fault) -> None:
        """Answer the next requests whose path starts with ``path_prefix`` with ``faults``."""
        self.faults.setdefault(path_prefix, []).extend(faults)

    def settings(self, settings: Settings) -> Settings:
        """``settings`` pointed at this front, with the tests' keys."""
        return settings.model_copy(
            update={
                "stripe_secret_key": SecretStr(SECRET_KEY),
                "stripe_api_base": self.url,
                "stripe_webhook_secret": SecretStr(WEBHOOK_SECRET),
            }
        )

    def billed(self, customer_id: str, event_name: str) -> int:
        """The sum of the values reported for the customer to the meter's event."""
        return sum(
            int(event["payload[value]"])
            for event in self.meter_events
            if event["payload[stripe_customer_id]"] == customer_id
            and event["event_name"] == event_name
        )

    def _next_fault(self, path: str) -> Fault | None:
        for prefix, queued in self.faults.items():
            if path.startswith(prefix) and queued:
                return queued.pop(0)
        return None


def _app(front: StripeFront, upstream: str) -> web.Application:
    http: dict[str, aiohttp.ClientSession] = {}

    async def open_session(_: web.Application) -> AsyncIterator[None]:
        http["session"] = aiohttp.ClientSession()
        yield
        await http["session"].close()

    def refuse(status: int, message: str, code: str | None = None) -> web.Response:
        fault = Fault(status, type="invalid_request_error", code=code, message=message)
        return web.json_response(fault.body(), status=status)

    async def create_meter(request: web.Request) -> web.Response:
        form = await request.post()
        front.meter_creations += 1
        event_name = str(form["event_name"])
        meter = front.meters.get(event_name)
        if meter is None:
            meter = {
                "id": f"mtr_{len(front.meters) + 1:08d}",
                "object": "billing.meter",
                "display_name": str(form.get("display_name", event_name)),
                "event_name": event_name,
                "status": "active",
                "default_aggregation": {"formula": str(form.get("default_aggregation[formula]"))},
                "created": int(time.time()),
            }
            front.meters[event_name] = meter
        return web.json_response(meter)

    async def list_meters(_: web.Request) -> web.Response:
        data = list(front.meters.values())
        return web.json_response(
            {"object": "list", "data": data, "has_more": False, "url": "/v1/billing/meters"}
        )

    async def meter_event(request: web.Request) -> web.Response:
        form = await request.post()
        record = {key: str(value) for key, value in form.items()}
        if front.refuse_meter_events:
            return refuse(400, "This meter is inactive.", "meter_inactive")
        if record.get("event_name") not in front.meters:
            return refuse(400, f"No active meter for event {record.get('event_name')}.")
        if not record.get("payload[stripe_customer_id]"):
            return refuse(400, "The payload needs stripe_customer_id.")
        if any(seen["identifier"] == record.get("identifier") for seen in front.meter_events):
            return refuse(400, "An event with this identifier exists.", "duplicate_meter_event")
        front.meter_events.append(record)
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

    async def send(
        method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes, str]:
        async with http["session"].request(
            method, f"{upstream}{path}", data=body, headers=headers
        ) as answer:
            return answer.status, await answer.read(), answer.content_type

    async def pending_prorations(customer: str, headers: dict[str, str]) -> set[str]:
        _, body, _ = await send("GET", f"/v1/invoiceitems?customer={customer}&limit=99", headers)
        return {item["id"] for item in json.loads(body)["data"] if item.get("proration")}

    async def update_without_proration(
        request: web.Request, form: list[tuple[str, str]], headers: dict[str, str]
    ) -> web.Response:
        kept = urlencode([(k, v) for k, v in form if k != "proration_behavior"]).encode()
        _, found, _ = await send("GET", request.path, headers)
        customer = json.loads(found)["customer"]
        before = await pending_prorations(customer, headers)
        status, body, content_type = await send("POST", request.path, headers, kept)
        if status == 200:
            for item in await pending_prorations(customer, headers) - before:
                await send("DELETE", f"/v1/invoiceitems/{item}", headers)
        return web.Response(status=status, body=body, content_type=content_type)

    async def preview_without_proration(
        request: web.Request, headers: dict[str, str]
    ) -> web.Response:
        status, body, content_type = await send(
            "POST", request.path_qs, headers, await request.read()
        )
        if status != 200:
            return web.Response(status=status, body=body, content_type=content_type)
        preview = json.loads(body)
        lines = [line for line in preview["lines"]["data"] if not line.get("proration")]
        total = sum(line["amount"] for line in lines)
        preview["lines"]["data"] = lines
        preview.update(subtotal=total, total=total, amount_due=total)
        return web.json_response(preview)

    async def forward(request: web.Request) -> web.Response:
        fault = front._next_fault(request.path)
        if fault is not None:
            return web.json_response(fault.body(), status=fault.status)
        if request.path == "/v1/billing/meters":
            return await (
                create_meter(request) if request.method == "POST" else list_meters(request)
            )
        if request.path == "/v1/billing/meter_events" and request.method == "POST":
            return await meter_event(request)
        headers = {
            name: request.headers[name] for name in _FORWARDED_HEADERS if name in request.headers
        }
        if request.method == "POST" and request.content_type.endswith("urlencoded"):
            form = parse_qsl((await request.read()).decode(), keep_blank_values=True)
            unprorated = ("proration_behavior", "none") in form
            if unprorated and request.path.startswith("/v1/subscriptions/"):
                return await update_without_proration(request, form, headers)
            if request.path == "/v1/invoices/create_preview" and (
                ("subscription_details[proration_behavior]", "none") in form
            ):
                return await preview_without_proration(request, headers)
        async with http["session"].request(
            request.method,
            f"{upstream}{request.path_qs}",
            data=await request.read(),
            headers=headers,
        ) as answer:
            return web.Response(
                status=answer.status,
                body=await answer.read(),
                content_type=answer.content_type,
            )

    app = web.Application()
    app.cleanup_ctx.append(open_session)
    app.router.add_route("*", "/{path:.*}", forward)
    return app


@pytest.fixture
async def stripe_front(localstripe: LocalStripe) -> AsyncIterator[StripeFront]:
    """A front on a free loopback port before this test's (emptied) localstripe."""
    front = StripeFront(url="")
    runner = web.AppRunner(_app(front, localstripe.url))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    front.url = f"http://127.0.0.1:{port}"
    yield front
    await runner.cleanup()
