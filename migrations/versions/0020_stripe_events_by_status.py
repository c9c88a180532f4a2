"""the webhook inbox by status, oldest first: operators replay unmatched events

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_stripe_events_status_created", "stripe_events", ["status", "stripe_created"]
    )


def downgrade() -> None:
    op.drop_index("ix_stripe_events_status_created", table_name="stripe_events")
