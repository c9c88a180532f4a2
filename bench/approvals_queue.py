"""The approvals queue on PostgreSQL: 10,000 pending rows by default, ``--large`` for 100,000
pending and 1,000,000 decided ones (the P3 target of issue 16).

Measures the API's own page query (``api.routers.approvals.queue_query``, through the ORM as
the endpoint runs it) for both views of the queue (``super_admin`` across tenants and a
``tenant_admin`` of the largest tenant), first page and a deep page reached by keyset, and
prints ratios against baselines measured in the same run: offset pagination for the deep pages,
and the first pages with the queue indexes dropped (inside a transaction that is rolled back).

Rows go in with COPY, so ``--large`` seeds in well under two minutes on 2 cores.

Needs PostgreSQL: ``BIZ_BENCH_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/
postgres``) names a server where a scratch database may be created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from sqlalchemy import Select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from api.routers.approvals import queue_query
from bench.timing import percentile, report, sample
from core import migrate
from core.db import create_engine
from core.security import Principal
from models.approval import Approval, ApprovalKind, ApprovalStatus
from models.tenant import TenantStatus
from models.user import Role

ADMIN_URL = os.environ.get(
    "BIZ_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PAGE = 50
TARGET_P99 = 0.010  # issue 16, P3: p99 per page
BIG_TENANT_SHARE = 0.1  # one tenant holds a tenth of the rows, so its admin has deep pages too
DECIDED_STATUSES = [
    ApprovalStatus.APPROVED,
    ApprovalStatus.APPROVED,
    ApprovalStatus.APPROVED,
    ApprovalStatus.REJECTED,
    ApprovalStatus.CHANGES_REQUESTED,
    ApprovalStatus.EXPIRED,
]
COLUMNS = [
    "id",
    "workflow_id",
    "tenant_id",
    "kind",
    "subject",
    "decider_role",
    "status",
    "requested_at",
    "due_at",
    "escalated_at",
    "decided_at",
    "decided_by",
    "reason",
    "facts",
    "attachments",
    "history",
]


@dataclass(frozen=True)
class Scale:
    pending: int
    decided: int
    tenants: int
    staff_deep: int  # rows a super_admin pages through to reach the deep page
    tenant_deep: int  # the same for the big tenant's admin
    runs: int  # samples per indexed query
    bare_runs: int  # samples per unindexed query (sequential scans: slow)


DEFAULT = Scale(10_000, 40_000, 200, 5_000, 500, 200, 200)
LARGE = Scale(100_000, 1_000_000, 1_000, 50_000, 5_000, 1_000, 20)


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """The name of a migrated database that is dropped afterwards."""
    name = f"bizosaas_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        await migrate.upgrade(database_url(name, "postgresql+asyncpg"))
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def database_url(name: str, driver: str) -> str:
    url = make_url(ADMIN_URL).set(drivername=driver, database=name)
    return url.render_as_string(hide_password=False)


def approval_rows(scale: Scale, tenant_ids: list[uuid.UUID]) -> Iterator[tuple[object, ...]]:
    """Pending approvals requested over the last 30 days, decided ones over the last two years."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    big, rest = tenant_ids[0], tenant_ids[1:]
    decider = uuid.uuid4()
    for n in range(scale.pending + scale.decided):
        pending = n < scale.pending
        age = timedelta(seconds=rng.randrange((30 if pending else 730) * 24 * 3600))
        requested_at = now - age
        tenant_id = big if rng.random() < BIG_TENANT_SHARE else rng.choice(rest)
        history = [{"at": requested_at.isoformat(), "event": "requested"}]
        status = ApprovalStatus.PENDING
        decided_at = None
        if not pending:
            status = rng.choice(DECIDED_STATUSES)
            decided_at = requested_at + timedelta(hours=rng.randrange(1, 150))
            history.append({"at": decided_at.isoformat(), "event": status.value})
        yield (
            uuid.uuid4(),
            f"approval:{n}",
            tenant_id,
            ApprovalKind.TENANT_ONBOARDING.value,
            f"New tenant: Company {n} (starter)",
            Role.SUPER_ADMIN.value,
            status.value,
            requested_at,
            requested_at + timedelta(days=7),
            None,
            decided_at,
            None if pending else decider,
            None,
            '{"plan": "starter"}',
            "[]",
            json.dumps(history),
        )


async def seed(name: str, scale: Scale) -> uuid.UUID:
    """Tenants and approvals, loaded with COPY; returns the big tenant's id."""
    now = datetime.now(UTC)
    tenant_ids = [uuid.uuid4() for _ in range(scale.tenants)]
    connection = await asyncpg.connect(database_url(name, "postgresql"))
    try:
        await connection.copy_records_to_table(
            "tenants",
            columns=["id", "name", "slug", "status", "created_at", "updated_at"],
            records=[
                (t, f"Tenant {n}", f"tenant-{n}", TenantStatus.PENDING_APPROVAL.value, now, now)
                for n, t in enumerate(tenant_ids)
            ],
        )
        rows = approval_rows(scale, tenant_ids)
        while batch := [row for _, row in zip(range(50_000), rows, strict=False)]:
            await connection.copy_records_to_table("approvals", columns=COLUMNS, records=batch)
        await connection.execute("VACUUM (ANALYZE) approvals")
        await connection.execute("ANALYZE tenants")
    finally:
        await connection.close()
    return tenant_ids[0]


def principal(role: Role, tenant_id: uuid.UUID) -> Principal:
    return Principal(user_id=uuid.uuid4(), tenant_id=tenant_id, role=role, session_id=uuid.uuid4())


def page(connection: AsyncConnection, query: Select[Approval]) -> Callable[[], Awaitable[object]]:
    async def run() -> object:
        async with AsyncSession(bind=connection) as session:
            return list(await session.scalars(query))

    return run


async def deep_key(
    connection: AsyncConnection, who: Principal, depth: int
) -> tuple[datetime, uuid.UUID]:
    """The keyset of the row a client reaches after paging through ``depth`` rows."""
    query = queue_query(who, ApprovalStatus.PENDING, None, None, depth)
    async with AsyncSession(bind=connection) as session:
        last = list(await session.scalars(query))[-1]
    return last.requested_at, last.id


async def explain(connection: AsyncConnection, query: Select[Approval]) -> str:
    compiled = query.compile(connection.sync_connection, compile_kwargs={"literal_binds": True})
    result = await connection.execute(text(f"EXPLAIN (ANALYZE, BUFFERS) {compiled}"))
    return "\n".join(f"    {line}" for (line,) in result)


async def measure(name: str, scale: Scale, show_plans: bool) -> None:
    started = time.perf_counter()
    big_tenant = await seed(name, scale)
    seeded = time.perf_counter() - started
    engine = create_engine(database_url(name, "postgresql+asyncpg"))
    pending = ApprovalStatus.PENDING
    staff = principal(Role.SUPER_ADMIN, uuid.uuid4())
    admin = principal(Role.TENANT_ADMIN, big_tenant)
    try:
        async with engine.connect() as connection:
            staff_first = queue_query(staff, pending, None, None, PAGE + 1)
            admin_first = queue_query(admin, pending, None, None, PAGE + 1)
            staff_key = await deep_key(connection, staff, scale.staff_deep)
            admin_key = await deep_key(connection, admin, scale.tenant_deep)
            staff_deep = queue_query(staff, pending, None, staff_key, PAGE + 1)
            admin_deep = queue_query(admin, pending, None, admin_key, PAGE + 1)
            staff_offset = staff_first.offset(scale.staff_deep)
            admin_offset = admin_first.offset(scale.tenant_deep)
            results = {
                "staff_first": await sample(page(connection, staff_first), scale.runs),
                "admin_first": await sample(page(connection, admin_first), scale.runs),
                "staff_deep": await sample(page(connection, staff_deep), scale.runs),
                "admin_deep": await sample(page(connection, admin_deep), scale.runs),
                "staff_offset": await sample(page(connection, staff_offset), scale.bare_runs),
                "admin_offset": await sample(page(connection, admin_offset), scale.bare_runs),
            }
            plans = {
                "super_admin, deep page by keyset": await explain(connection, staff_deep),
                "tenant_admin, deep page by keyset": await explain(connection, admin_deep),
            }
            await connection.rollback()
            async with connection.begin() as unindexed:
                await connection.execute(text("DROP INDEX ix_approvals_queue"))
                await connection.execute(text("DROP INDEX ix_approvals_tenant_queue"))
                bare_first = page(connection, staff_first)
                bare_own = page(connection, admin_first)
                results["staff_bare"] = await sample(bare_first, scale.bare_runs)
                results["admin_bare"] = await sample(bare_own, scale.bare_runs)
                await unindexed.rollback()
    finally:
        await engine.dispose()

    print(
        f"approvals queue, PostgreSQL, {scale.pending:,} pending + {scale.decided:,} decided "
        f"over {scale.tenants:,} tenants (the big one holds {BIG_TENANT_SHARE:.0%}), "
        f"page {PAGE}; seeded in {seeded:.1f} s"
    )
    r = results
    report("super_admin first page (unindexed vs indexed)", r["staff_bare"], r["staff_first"])
    report("tenant_admin first page (unindexed vs indexed)", r["admin_bare"], r["admin_first"])
    report(
        f"super_admin page after {scale.staff_deep:,} rows (offset vs keyset)",
        r["staff_offset"],
        r["staff_deep"],
    )
    report(
        f"tenant_admin page after {scale.tenant_deep:,} rows (offset vs keyset)",
        r["admin_offset"],
        r["admin_deep"],
    )
    if show_plans:
        for title, plan in plans.items():
            print(f"  plan, {title}:\n{plan}")
    keyset = ("staff_first", "admin_first", "staff_deep", "admin_deep")
    worst = max(percentile(r[k], 99) for k in keyset)
    verdict = "within" if worst <= TARGET_P99 else "OVER"
    print(f"worst keyset p99 {worst * 1e3:.2f} ms: {verdict} the {TARGET_P99 * 1e3:.0f} ms target")


async def main(scale: Scale = DEFAULT, show_plans: bool = False) -> None:
    async with scratch_database() as name:
        await measure(name, scale, show_plans)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.approvals_queue")
    parser.add_argument(
        "--large", action="store_true", help="100,000 pending and 1,000,000 decided rows"
    )
    parser.add_argument("--plans", action="store_true", help="print EXPLAIN ANALYZE of deep pages")
    options = parser.parse_args()
    asyncio.run(main(LARGE if options.large else DEFAULT, options.plans))
