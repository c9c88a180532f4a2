"""usage reports Stripe refused: kept with the reason instead of being resent every hour

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_reports") as batch:
        batch.add_column(sa.Column("refused", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_reports") as batch:
        batch.drop_column("refused")
