"""session authentication strength: how the session signed in and when it last passed MFA

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("auth_sessions") as batch:
        batch.add_column(
            sa.Column("method", sa.String(length=16), server_default="pwd", nullable=False)
        )
        batch.add_column(sa.Column("mfa_at", models.base.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("auth_sessions") as batch:
        batch.drop_column("mfa_at")
        batch.drop_column("method")
