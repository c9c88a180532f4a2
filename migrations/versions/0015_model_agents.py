"""model-backed agents: a tenant's model and temperature per agent, and each decision's
model, tokens and duration

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_configs") as batch:
        batch.add_column(sa.Column("model", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("temperature", sa.Double(), nullable=True))
    with op.batch_alter_table("agent_decisions") as batch:
        batch.add_column(sa.Column("model", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("tokens", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("duration_ms", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agent_decisions") as batch:
        batch.drop_column("duration_ms")
        batch.drop_column("tokens")
        batch.drop_column("model")
    with op.batch_alter_table("agent_configs") as batch:
        batch.drop_column("temperature")
        batch.drop_column("model")
