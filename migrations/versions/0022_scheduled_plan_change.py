"""the subscriptions projection shows a plan change waiting for the period's end, and when,
the seats billed and how often it renews

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

_PLAN = sa.Enum(
    "starter", "professional", "business", "enterprise", name="planid", native_enum=False, length=32
)


def upgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(sa.Column("scheduled_plan", _PLAN, nullable=True))
        batch.add_column(
            sa.Column("scheduled_plan_at", models.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("seats", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("interval", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("interval")
        batch.drop_column("seats")
        batch.drop_column("scheduled_plan_at")
        batch.drop_column("scheduled_plan")
