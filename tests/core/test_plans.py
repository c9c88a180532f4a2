"""The plan catalogue from settings, and the user limit where members are created."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.db import SessionFactory, transaction
from core.plans import GIB, PlanLimitReached, Resource, ensure_room_for_user, plan_of
from core.settings import Settings
from models.onboarding import PlanId
from models.tenant import Tenant
from models.user import Role
from tests.factories import member


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
