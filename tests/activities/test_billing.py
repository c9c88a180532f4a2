"""Billing activities on their own: resuming from heartbeats, and keys that fit their columns."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

from sqlalchemy import select
from temporalio.testing import ActivityEnvironment

from activities.billing import METER_EVENTS, BillingActivities, bounded_key
from connectors.billing.stripe_gateway import gateway_from_settings
from connectors.mail import mailer_from_settings
from core.db import SessionFactory, transaction
from core.settings import Settings
from models.audit import AuditEntry
from models.billing import (
    AdjustmentKind,
    AdjustmentRecord,
    AdjustmentSnapshot,
    BillingNotice,
    InvoiceAdjustment,
    InvoiceSnapshot,
    NoticeKind,
    OpenInvoicesPayment,
    Subscription,
    UsageMetric,
    UsageRecord,
    UsageReport,
)
from models.email import OutboundEmail
from models.user import Role, User
from tests.factories import member
from tests.peers.stripe_front import StripeFront
from tests.peers_stripe import LocalStripe, card_holder, unpaid_invoice, use_card

pytest_plugins = ["tests.peers_stripe", "tests.peers.stripe_front"]


def _activities(sessions: SessionFactory, settings: Settings) -> BillingActivities:
    return BillingActivities(
        sessions,
        mailer_from_settings(settings, sessions),
        settings,
        gateway_from_settings(settings),
    )


async def test_paying_open_invoices_resumes_from_its_heartbeat(
    sessions: SessionFactory, settings: Settings, localstripe: LocalStripe
) -> None:
    billing_settings = localstripe.settings(settings)
    billing = _activities(sessions, billing_settings)
    async with localstripe.sdk() as sdk:
        customer = await card_holder(sdk, uuid.uuid4(), "resume@example.com")
        plan = await sdk.v1.plans.create_async(
            params={
                "amount": 2900,
                "currency": "usd",
                "interval": "month",
                "product": {"name": "P"},
            }
        )
        subscription = await sdk.v1.subscriptions.create_async(
            params={"customer": customer, "items": [{"plan": str(plan.id)}]}
        )
        open_invoice = await unpaid_invoice(sdk, customer, str(subscription.id))
        await use_card(sdk, customer)  # a good card now: a new attempt would pay
        before = (await sdk.v1.invoices.retrieve_async(open_invoice)).to_dict()
    payment = OpenInvoicesPayment(customer_id=customer, idempotency_key="pay-1")

    # An attempt that heartbeated this invoice and then died: the retry does not charge it.
    attempted = InvoiceSnapshot(
        invoice_id=open_invoice,
        customer_id=customer,
        status="open",
        amount_due=before["amount_due"],
        amount_paid=0,
        currency="usd",
        created=before["created"],
        as_of=before["created"],
    )
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, heartbeat_details=[[attempted.model_dump(mode="json")]]
    )
    resumed = await env.run(billing.pay_open_invoices, payment)
    assert resumed == [attempted]
    async with localstripe.sdk() as sdk:
        assert (await sdk.v1.invoices.retrieve_async(open_invoice)).status == "open"

    # A first attempt charges it, heartbeating what it did.
    beats: list[object] = []
    fresh = ActivityEnvironment()
    fresh.on_heartbeat = lambda *details: beats.append(details)
    paid = await fresh.run(billing.pay_open_invoices, payment)
    assert [(invoice.invoice_id, invoice.status) for invoice in paid] == [(open_invoice, "paid")]
    assert len(beats) == 1


async def test_a_notice_to_a_very_long_address_fits_the_outbox_key(
    sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    address = f"{'a' * 60}.{'b' * 60}@{'c' * 60}.{'d' * 40}.example.com"
    async with transaction(sessions) as session:
        user = await session.get(User, admin.user_id)
        assert user is not None
        user.email = address
    billing = _activities(sessions, settings)
    notice = BillingNotice(
        tenant_id=admin.tenant_id,
        kind=NoticeKind.SUSPENDED,
        idempotency_key=f"billing:{admin.tenant_id}:dunning:2026-01-01T00:00:00+00:00",
    )
    for _ in range(2):  # a retry finds the row under the same key and sends nothing more
        assert await ActivityEnvironment().run(billing.send_billing_notice, notice) == 1
    async with sessions() as session:
        keys = list(
            await session.scalars(
                select(OutboundEmail.idempotency_key).where(OutboundEmail.recipient == address)
            )
        )
    assert keys == [bounded_key(f"{notice.idempotency_key}:{address}")]
    assert len(keys[0]) <= 200
    assert bounded_key("short") == "short"


async def test_a_usage_report_stripe_refuses_is_recorded_once_not_resent(
    sessions: SessionFactory, settings: Settings, stripe_front: StripeFront
) -> None:
    admin = await member(sessions, settings)
    customer = f"cus_{uuid.uuid4().hex[:12]}"
    async with transaction(sessions) as session:
        session.add(Subscription(tenant_id=admin.tenant_id, stripe_customer_id=customer))
    metering = _activities(sessions, stripe_front.settings(settings))
    env = ActivityEnvironment()
    use = UsageRecord(
        tenant_id=admin.tenant_id,
        metric=UsageMetric.WORKFLOW_RUNS,
        quantity=4,
        occurred_at=datetime.now(UTC),
        idempotency_key=f"run-{uuid.uuid4()}",
    )
    assert await env.run(metering.record_usage, use)
    # The meter was deactivated in Stripe's dashboard: Stripe refuses the report.
    stripe_front.refuse_meter_events = True
    assert await env.run(metering.report_usage, admin.tenant_id) == 0
    assert await env.run(metering.report_usage, admin.tenant_id) == 0  # not resent each hour
    async with sessions() as session:
        (report,) = (
            await session.scalars(
                select(UsageReport).where(UsageReport.tenant_id == admin.tenant_id)
            )
        ).all()
        refusals = list(
            await session.scalars(
                select(AuditEntry.data).where(
                    AuditEntry.tenant_id == admin.tenant_id,
                    AuditEntry.action == "billing.usage_report_refused",
                )
            )
        )
    assert report.sent_at is None
    assert report.refused is not None
    assert "inactive" in report.refused
    assert [data["report"] for data in refusals] == [report.id]
    assert stripe_front.meter_events == []
    # The meters it reports to were found or created before the first report.
    assert sorted(stripe_front.meters) == sorted(METER_EVENTS.values())


def _refund(amount: int, as_of: int) -> AdjustmentSnapshot:
    return AdjustmentSnapshot(
        kind=AdjustmentKind.REFUND,
        stripe_id="ch_adjusted",
        charge_id="ch_adjusted",
        invoice_id="in_adjusted",
        amount=amount,
        currency="usd",
        status="refunded" if amount == 2900 else "partially_refunded",
        as_of=as_of,
    )


async def test_an_adjustment_keeps_its_newest_state_and_refunds_are_never_added_up(
    sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    billing = _activities(sessions, settings)
    env = ActivityEnvironment()
    suffix = uuid.uuid4().hex[:8]

    async def record(adjustment: AdjustmentSnapshot, event: str, key: str) -> AdjustmentSnapshot:
        stripe_id = f"{adjustment.stripe_id}_{suffix}"
        unique = adjustment.model_copy(update={"stripe_id": stripe_id})
        return await env.run(
            billing.record_invoice_adjustment,
            AdjustmentRecord(
                tenant_id=admin.tenant_id,
                adjustment=unique,
                event_type=event,
                idempotency_key=f"{suffix}:{key}",
            ),
        )

    async def held(kind: AdjustmentKind) -> tuple[int, str | None]:
        async with sessions() as session:
            row = await session.scalar(
                select(InvoiceAdjustment).where(
                    InvoiceAdjustment.tenant_id == admin.tenant_id, InvoiceAdjustment.kind == kind
                )
            )
        assert row is not None
        return row.amount, row.status

    t = 1_800_000_000
    await record(_refund(1000, t), "charge.refunded", "evt-1")
    await record(_refund(1000, t), "charge.refunded", "evt-1")  # a retry of the activity
    assert await held(AdjustmentKind.REFUND) == (1000, "partially_refunded")
    await record(_refund(2900, t + 5), "charge.refunded", "evt-2")
    # An older event late, and a smaller total in the same second: Stripe's newest total stays.
    await record(_refund(1000, t), "charge.refunded", "evt-3")
    await record(_refund(2000, t + 5), "charge.refunded", "evt-4")
    assert await held(AdjustmentKind.REFUND) == (2900, "refunded")

    disputed = AdjustmentSnapshot(
        kind=AdjustmentKind.DISPUTE,
        stripe_id="dp_adjusted",
        charge_id="ch_adjusted",
        invoice_id="in_adjusted",
        amount=2900,
        currency="usd",
        reason="fraudulent",
        status="needs_response",
        as_of=t,
    )
    recorded = await record(disputed, "charge.dispute.created", "evt-5")
    assert recorded.invoice_id == "in_adjusted"
    closed, updated = "charge.dispute.closed", "charge.dispute.updated"
    await record(disputed.model_copy(update={"status": "lost", "as_of": t + 9}), closed, "evt-6")
    await record(
        disputed.model_copy(update={"status": "under_review", "as_of": t + 3}), updated, "evt-7"
    )
    assert await held(AdjustmentKind.DISPUTE) == (2900, "lost")
    # The same second: a closed dispute is the later state.
    await record(
        disputed.model_copy(update={"status": "under_review", "as_of": t + 9}), updated, "evt-8"
    )
    assert await held(AdjustmentKind.DISPUTE) == (2900, "lost")

    async with sessions() as session:
        actions = list(
            await session.scalars(
                select(AuditEntry.action)
                .where(
                    AuditEntry.tenant_id == admin.tenant_id,
                    AuditEntry.idempotency_key.startswith(suffix),
                )
                .order_by(AuditEntry.seq)
            )
        )
    # One audit row per state recorded; stale states and retries add none.
    assert actions == [
        "billing.refund_recorded",
        "billing.refund_recorded",
        "billing.dispute_opened",
        "billing.dispute_closed",
    ]


async def test_a_dispute_alerts_every_operator_once(
    sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    operators = [await member(sessions, settings, Role.SUPER_ADMIN) for _ in range(2)]
    billing = _activities(sessions, settings)
    notice = BillingNotice(
        tenant_id=admin.tenant_id,
        kind=NoticeKind.DISPUTED,
        idempotency_key=f"billing:{admin.tenant_id}:dispute:dp_1:disputed:operators",
        adjustment=AdjustmentSnapshot(
            kind=AdjustmentKind.DISPUTE,
            stripe_id="dp_1",
            charge_id="ch_1",
            invoice_id="in_1",
            amount=2900,
            currency="usd",
            reason="fraudulent",
            status="needs_response",
            as_of=1,
        ),
    )
    for _ in range(2):  # a retry sends nothing more
        assert await ActivityEnvironment().run(billing.send_operator_notice, notice) >= 2
    async with sessions() as session:
        mails = (
            await session.scalars(
                select(OutboundEmail).where(
                    OutboundEmail.recipient.in_([o.email for o in [*operators, admin]])
                )
            )
        ).all()
    assert sorted(mail.recipient for mail in mails) == sorted(o.email for o in operators)
    assert {mail.tenant_id for mail in mails} == {None}  # the platform's mail, not the tenant's
    assert "29.00 USD" in mails[0].subject
    assert "in_1" in mails[0].body
    assert "fraudulent" in mails[0].body
    assert "https://dashboard.stripe.com/disputes/dp_1" in mails[0].body
