"""The plan catalogue from settings, and the user limit where members are created."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from pydantic import ValidationError
from temporalio.testing import ActivityEnvironment

from activities.billing import BillingActivities
from connectors.mail import mailer_from_settings
from core.db import SessionFactory, transaction
from core.plans import (
    GIB,
    PlanLimitReached,
    Resource,
    default_plans,
    ensure_room_for_user,
    hold_connection,
    plan_of,
)
from core.settings import Settings
from models.base import utcnow
from models.billing import BillingInterval, PlanFit
from models.connection import ConnectionHold
from models.onboarding import PlanId
from models.tenant import Tenant
from models.user import Role
from tests.factories import hubspot_connection, member


def test_the_product_plans_are_the_default() -> None:
    plans = Settings(_env_file=None).billing_plans
    business = plan_of(plans, PlanId.BUSINESS)
    assert (business.amount, business.currency, business.interval) == (19900, "usd", "month")
    assert business.limit(Resource.USERS) == 50
    assert business.limit(Resource.CONNECTORS) is None
    assert business.limit(Resource.STORAGE_BYTES) == 200 * GIB
    assert all(plan_of(plans, PlanId.ENTERPRISE).limit(resource) is None for resource in Resource)


def test_plans_are_configurable_but_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    plans = Settings(_env_file=None).billing_plans
    cheaper = [
        plan.model_copy(update={"amount": 1900}) if plan.id is PlanId.STARTER else plan
        for plan in plans
    ]
    monkeypatch.setenv(
        "BIZ_BILLING_PLANS", "[" + ",".join(p.model_dump_json() for p in cheaper) + "]"
    )
    configured = Settings(_env_file=None).billing_plans
    assert plan_of(configured, PlanId.STARTER).amount == 1900
    assert plan_of(configured, PlanId.STARTER).stripe_plan_id == "bizosaas-starter-1900-usd-month"

    monkeypatch.setenv("BIZ_BILLING_PLANS", "[" + cheaper[0].model_dump_json() + "]")
    with pytest.raises(ValidationError, match="each plan exactly once"):
        Settings(_env_file=None)


def test_reminders_fall_within_the_grace_period() -> None:
    with pytest.raises(ValidationError, match="BIZ_BILLING_REMINDER_DAYS"):
        Settings(_env_file=None, billing_grace_days=5, billing_reminder_days=[1, 3, 6])


async def test_a_member_beyond_the_plan_is_refused(
    sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    async with sessions() as session:  # no plan yet: not limited
        await ensure_room_for_user(session, settings.billing_plans, admin.tenant_id)
    async with transaction(sessions) as session:
        tenant = await session.get(Tenant, admin.tenant_id)
        assert tenant is not None
        tenant.plan = PlanId.STARTER.value
    for _ in range(2):
        async with sessions() as session:
            await ensure_room_for_user(session, settings.billing_plans, admin.tenant_id)
        await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    async with sessions() as session:
        with pytest.raises(PlanLimitReached) as refused:
            await ensure_room_for_user(session, settings.billing_plans, admin.tenant_id)
    assert refused.value.extra == {"limit": "users", "allowed": 3, "used": 3}
    assert "Starter plan allows 3 users" in refused.value.detail


async def test_a_plan_change_under_way_holds_invitations_to_the_stricter_plan(
    sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    for _ in range(2):  # three members: what the starter plan allows
        await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    await _on_plan(sessions, admin.tenant_id, PlanId.PROFESSIONAL)
    billing = BillingActivities(sessions, mailer_from_settings(settings, sessions), settings, None)
    env = ActivityEnvironment()

    # The downgrade's check passes and holds the tenant to the starter plan until recorded:
    # an invitation racing it is refused, though the tenant is on the professional plan still.
    fits = PlanFit(tenant_id=admin.tenant_id, plan=PlanId.STARTER)
    assert await env.run(billing.plan_excesses, fits) == []
    async with sessions() as session:
        with pytest.raises(PlanLimitReached) as refused:
            await ensure_room_for_user(session, settings.billing_plans, admin.tenant_id)
    assert "Starter plan allows 3 users" in refused.value.detail
    # An upgrade under way loosens nothing: the tenant keeps its own plan's limit meanwhile.
    await _on_plan(sessions, admin.tenant_id, PlanId.STARTER)
    up = PlanFit(tenant_id=admin.tenant_id, plan=PlanId.PROFESSIONAL)
    assert await env.run(billing.plan_excesses, up) == []
    async with sessions() as session:
        with pytest.raises(PlanLimitReached):
            await ensure_room_for_user(session, settings.billing_plans, admin.tenant_id)
    # A change that never got recorded (Stripe refused it) holds no longer than its bound.
    await _on_plan(sessions, admin.tenant_id, PlanId.PROFESSIONAL)
    assert await env.run(billing.plan_excesses, fits) == []
    async with transaction(sessions) as session:
        tenant = await session.get(Tenant, admin.tenant_id)
        assert tenant is not None
        assert tenant.plan_reserved == PlanId.STARTER.value
        tenant.plan_reserved_until = utcnow() - timedelta(seconds=1)
    async with sessions() as session:
        await ensure_room_for_user(session, settings.billing_plans, admin.tenant_id)


async def test_a_downgrade_counts_the_connections_being_set_up(
    sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    await _on_plan(sessions, admin.tenant_id, PlanId.PROFESSIONAL)
    for _ in range(5):  # what the starter plan allows
        await hubspot_connection(sessions, settings, admin.tenant_id)
    connecting = uuid.uuid4()
    async with transaction(sessions) as session:
        await hold_connection(session, settings.billing_plans, admin.tenant_id, connecting)
    billing = BillingActivities(sessions, mailer_from_settings(settings, sessions), settings, None)
    env = ActivityEnvironment()
    down = PlanFit(tenant_id=admin.tenant_id, plan=PlanId.STARTER)
    [excess] = await env.run(billing.plan_excesses, down)
    assert (excess.resource, excess.used, excess.limit) == (Resource.CONNECTORS, 6, 5)

    # A connect that never ended (its workflow never started) holds its slot no longer.
    async with transaction(sessions) as session:
        held = await session.get(ConnectionHold, connecting)
        assert held is not None
        held.held_until = utcnow() - timedelta(seconds=1)
    assert await env.run(billing.plan_excesses, down) == []


async def _on_plan(sessions: SessionFactory, tenant_id: uuid.UUID, plan: PlanId) -> None:
    async with transaction(sessions) as session:
        tenant = await session.get(Tenant, tenant_id)
        assert tenant is not None
        tenant.plan = plan.value


def test_a_plan_is_sold_by_its_interval_and_by_the_year_only_when_priced_so() -> None:
    starter = plan_of(default_plans(), PlanId.STARTER)
    assert starter.priced(None) is starter
    assert starter.priced(BillingInterval.MONTH) is starter
    yearly = starter.priced(BillingInterval.YEAR)
    assert (yearly.amount, yearly.interval) == (29000, "year")
    assert yearly.stripe_plan_id == "bizosaas-starter-29000-usd-year"
    monthly_only = starter.model_copy(update={"annual_amount": None})
    with pytest.raises(ValueError, match="not sold by the year"):
        monthly_only.priced(BillingInterval.YEAR)
