"""The plan catalogue (configurable, with the product's four plans as defaults) and the checks
that keep a tenant within its plan's limits."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Problem, Unprocessable
from models.base import utcnow
from models.billing import GAUGES, BillingInterval, UsageEvent, UsageMetric
from models.connection import Connection, ConnectionHold, ConnectionStatus
from models.onboarding import PlanId
from models.tenant import Tenant
from models.user import Membership

GIB = 1024**3


class Resource(StrEnum):
    """What a plan limits."""

    USERS = "users"
    CONNECTORS = "connectors"
    AI_CREDITS = "ai_credits"
    STORAGE_BYTES = "storage_bytes"


class PlanSpec(BaseModel):
    """One plan as configured: its price and its limits (``None`` is unlimited)."""

    model_config = ConfigDict(frozen=True)

    id: PlanId
    name: str
    amount: int = Field(ge=0, description="price per interval, in the currency's minor unit")
    currency: str = Field(default="usd", pattern=r"^[a-z]{3}$")
    interval: str = Field(default="month", pattern=r"^(day|week|month|year)$")
    limits: dict[Resource, int | None]
    # Priced per user: ``amount`` is per member, and the subscription bills the tenant's
    # members as its quantity.
    per_seat: bool = False
    # The price of a year, when the plan is also sold by the year (``None``: it is not).
    annual_amount: int | None = Field(default=None, ge=0)

    def priced(self, interval: BillingInterval | None) -> PlanSpec:
        """The plan as sold by ``interval``: its own price, or its annual one (ValueError when
        it is not sold by the year)."""
        if interval is None or interval.value == self.interval:
            return self
        if interval is not BillingInterval.YEAR or self.annual_amount is None:
            raise ValueError(f"The {self.name} plan is not sold by the {interval.value}.")
        return self.model_copy(
            update={"amount": self.annual_amount, "interval": "year", "annual_amount": None}
        )

    def limit(self, resource: Resource) -> int | None:
        return self.limits.get(resource)

    @property
    def stripe_plan_id(self) -> str:
        """The Stripe plan (price) id; a new price gets a new id, as Stripe prices are fixed."""
        return f"bizosaas-{self.id.value}-{self.amount}-{self.currency}-{self.interval}"


def _limits(
    users: int | None, connectors: int | None, ai_credits: int | None, storage_gb: int | None
) -> dict[Resource, int | None]:
    return {
        Resource.USERS: users,
        Resource.CONNECTORS: connectors,
        Resource.AI_CREDITS: ai_credits,
        Resource.STORAGE_BYTES: storage_gb * GIB if storage_gb is not None else None,
    }


def default_plans() -> list[PlanSpec]:
    """The product's plans: starter, professional, business and enterprise (USD, monthly, or
    yearly for ten months' price)."""
    return [
        PlanSpec(
            id=PlanId.STARTER,
            name="Starter",
            amount=2900,
            annual_amount=29000,
            limits=_limits(3, 5, 1000, 10),
        ),
        PlanSpec(
            id=PlanId.PROFESSIONAL,
            name="Professional",
            amount=7900,
            annual_amount=79000,
            limits=_limits(10, 15, 5000, 50),
        ),
        PlanSpec(
            id=PlanId.BUSINESS,
            name="Business",
            amount=19900,
            annual_amount=199000,
            limits=_limits(50, None, 20000, 200),
        ),
        PlanSpec(
            id=PlanId.ENTERPRISE,
            name="Enterprise",
            amount=49900,
            annual_amount=499000,
            limits=_limits(None, None, None, None),
        ),
    ]


def check_catalogue(plans: Iterable[PlanSpec]) -> list[PlanSpec]:
    """Every plan id configured exactly once."""
    plans = list(plans)
    ids = [plan.id for plan in plans]
    if sorted(ids) != sorted(PlanId):
        raise ValueError(
            "BIZ_BILLING_PLANS must configure each plan exactly once: "
            + ", ".join(plan.value for plan in PlanId)
        )
    return plans


def plan_of(plans: Iterable[PlanSpec], plan_id: PlanId) -> PlanSpec:
    return next(plan for plan in plans if plan.id == plan_id)


def ensure_sold(
    plans: Iterable[PlanSpec], plan_id: PlanId, interval: BillingInterval | None
) -> None:
    """422 when the plan is not sold by ``interval`` (by the year without an annual price)."""
    try:
        plan_of(plans, plan_id).priced(interval)
    except ValueError as exc:
        raise Unprocessable(str(exc)) from None


class PlanLimitReached(Problem):
    """The tenant's plan does not allow one more of something."""

    status, slug, title = 403, "plan-limit-reached", "Plan limit reached"


class Excess(BaseModel):
    """A resource used beyond what a plan allows."""

    resource: Resource
    used: int
    limit: int


def excesses(plan: PlanSpec, usage: dict[Resource, int]) -> list[Excess]:
    """The resources ``usage`` holds beyond ``plan``'s limits (unmeasured ones are not checked)."""
    found = []
    for resource, used in usage.items():
        limit = plan.limit(resource)
        if limit is not None and used > limit:
            found.append(Excess(resource=resource, used=used, limit=limit))
    return found


# --- Measured usage -----------------------------------------------------------------------


async def member_count(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    count = await session.scalar(
        select(func.count()).select_from(Membership).where(Membership.tenant_id == tenant_id)
    )
    return int(count or 0)


async def latest_storage(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """The tenant's latest storage measurement in bytes (0 when never measured)."""
    value = await session.scalar(
        select(UsageEvent.quantity)
        .where(UsageEvent.tenant_id == tenant_id, UsageEvent.metric == UsageMetric.STORAGE_BYTES)
        .order_by(UsageEvent.occurred_at.desc())
        .limit(1)
    )
    return int(value or 0)


async def measured_usage(session: AsyncSession, tenant_id: uuid.UUID) -> dict[Resource, int]:
    """What the tenant uses of the limited resources that are measured today (AI credits have
    no measurement yet, so no limit on them is checked)."""
    return {
        Resource.USERS: await member_count(session, tenant_id),
        Resource.CONNECTORS: await connection_count(session, tenant_id),
        Resource.STORAGE_BYTES: await latest_storage(session, tenant_id),
    }


async def usage_since(
    session: AsyncSession, tenant_id: uuid.UUID, since: datetime
) -> dict[UsageMetric, int]:
    """The tenant's metered usage since ``since``: counters summed, gauges at their latest."""
    rows = await session.execute(
        select(UsageEvent.metric, func.sum(UsageEvent.quantity))
        .where(
            UsageEvent.tenant_id == tenant_id,
            UsageEvent.occurred_at >= since,
            UsageEvent.metric.not_in(GAUGES),
        )
        .group_by(UsageEvent.metric)
    )
    sums: dict[UsageMetric, int | None] = dict(rows.all())
    usage = {metric: int(sums.get(metric) or 0) for metric in UsageMetric if metric not in GAUGES}
    usage[UsageMetric.STORAGE_BYTES] = await latest_storage(session, tenant_id)
    return usage


async def seats_of(session: AsyncSession, plan: PlanSpec, tenant_id: uuid.UUID) -> int:
    """The quantity the plan bills the tenant: its members when priced per user, else 1."""
    return max(await member_count(session, tenant_id), 1) if plan.per_seat else 1


async def ensure_room_for_user(
    session: AsyncSession, plans: Iterable[PlanSpec], tenant_id: uuid.UUID
) -> None:
    """Refuse one more member when the tenant's plan has no room for it (403 naming the
    limit). Call it where a member is created (an invitation), before writing anything; a
    tenant without a plan yet is not limited."""
    used = await member_count(session, tenant_id)
    await _ensure_room(session, plans, tenant_id, Resource.USERS, used, "upgrade the plan")


async def connection_count(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    """The tenant's connections that count against its plan: those not disconnected, and
    those being set up (their slots held). One statement, so that a hold turning into its
    connection as this reads is counted once, never zero times."""
    connections = (
        select(func.count())
        .select_from(Connection)
        .where(
            Connection.tenant_id == tenant_id,
            Connection.status != ConnectionStatus.DISCONNECTED,
        )
        .scalar_subquery()
    )
    holds = (
        select(func.count())
        .select_from(ConnectionHold)
        .where(ConnectionHold.tenant_id == tenant_id, ConnectionHold.held_until > utcnow())
        .scalar_subquery()
    )
    count = await session.scalar(select(connections + holds))
    return int(count or 0)


async def ensure_room_for_connection(
    session: AsyncSession, plans: Iterable[PlanSpec], tenant_id: uuid.UUID
) -> None:
    """Refuse one more connection when the tenant's plan has no room for it (403 naming the
    limit); a tenant without a plan yet is not limited."""
    used = await connection_count(session, tenant_id)
    advice = "upgrade the plan or disconnect one"
    await _ensure_room(session, plans, tenant_id, Resource.CONNECTORS, used, advice)


#: How long a slot is held for a connection being set up when its workflow neither records
#: the connection nor lets the connect go (it never started, or failed): a connect takes
#: seconds, retries included; an OAuth connect's wait for the consent comes on top.
CONNECTION_HOLD = timedelta(minutes=15)


async def take_turn(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    """Hold the tenant's row until the transaction ends: the writes a count of the tenant
    admits (invitations, connects, role changes, removals) take turns, so none reads a count
    another is about to change (a plan's limit, the last tenant_admin)."""
    await session.get(Tenant, tenant_id, with_for_update=True)


async def hold_connection(
    session: AsyncSession,
    plans: Iterable[PlanSpec],
    tenant_id: uuid.UUID,
    connection_id: uuid.UUID,
    wait: timedelta = timedelta(),
) -> None:
    """Take a slot of the tenant's plan for a new connection (403 when there is none), in
    turn with the tenant's other connects. It is held until the connection's workflow records
    the connection or lets the connect go, at most ``CONNECTION_HOLD`` plus ``wait`` (a
    consent's); the caller commits before starting that workflow.

    Holds that ran out are deleted before the count: on SQLite, which has no row locks, that
    first write is what makes two connects take turns."""
    await take_turn(session, tenant_id)
    now = utcnow()
    await session.execute(
        delete(ConnectionHold).where(
            ConnectionHold.tenant_id == tenant_id, ConnectionHold.held_until <= now
        )
    )
    await ensure_room_for_connection(session, plans, tenant_id)
    until = now + CONNECTION_HOLD + wait
    session.add(ConnectionHold(connection_id=connection_id, tenant_id=tenant_id, held_until=until))
    await session.flush()


async def release_connection(session: AsyncSession, connection_id: uuid.UUID) -> None:
    """Free the slot held for a connection being set up (none held: nothing to do)."""
    await session.execute(
        delete(ConnectionHold).where(ConnectionHold.connection_id == connection_id)
    )


_NOUNS = {Resource.USERS: "users", Resource.CONNECTORS: "connections"}
#: How long a plan change holds the tenant to the stricter of its plans: the change's own
#: bound (a minute to Stripe, retries included) with room to record it.
PLAN_RESERVATION = timedelta(minutes=5)


async def reserve_plan(
    session: AsyncSession, tenant_id: uuid.UUID, plan: PlanId, until: datetime | None = None
) -> None:
    """Hold the tenant (its row locked by the caller) to the stricter of its plan and
    ``plan`` while a change to ``plan`` is under way (or, for a change at the period's end,
    ``until`` it is made); recording the change ends it."""
    await session.execute(
        update(Tenant)
        .where(Tenant.id == tenant_id)
        .values(plan_reserved=plan.value, plan_reserved_until=until or utcnow() + PLAN_RESERVATION)
    )


async def _governing_plan(
    session: AsyncSession, plans: Iterable[PlanSpec], tenant_id: uuid.UUID, resource: Resource
) -> PlanSpec | None:
    """The plan whose limit on ``resource`` holds now: the tenant's, or the one a change under
    way moves it to when that is stricter (``None``: no plan yet, not limited)."""
    row = (
        await session.execute(
            select(Tenant.plan, Tenant.plan_reserved, Tenant.plan_reserved_until).where(
                Tenant.id == tenant_id
            )
        )
    ).first()
    if row is None or row.plan is None:
        return None
    plan = plan_of(plans, PlanId(row.plan))
    if row.plan_reserved is None or row.plan_reserved_until is None:
        return plan
    if row.plan_reserved_until <= utcnow():
        return plan
    reserved = plan_of(plans, PlanId(row.plan_reserved))
    ours, theirs = plan.limit(resource), reserved.limit(resource)
    return reserved if theirs is not None and (ours is None or theirs < ours) else plan


async def _ensure_room(
    session: AsyncSession,
    plans: Iterable[PlanSpec],
    tenant_id: uuid.UUID,
    resource: Resource,
    used: int,
    advice: str,
) -> None:
    plan = await _governing_plan(session, plans, tenant_id, resource)
    if plan is None:
        return
    limit = plan.limit(resource)
    if limit is not None and used + 1 > limit:
        noun = _NOUNS[resource]
        raise PlanLimitReached(
            f"The {plan.name} plan allows {limit} {noun} and the tenant has {used}; {advice}.",
            limit=resource.value,
            allowed=limit,
            used=used,
        )
