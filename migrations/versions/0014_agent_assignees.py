"""agents as task assignees: an agent's concurrency limit per tenant, and the agent a task is
assigned to in the tasks projection (its load)

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agent_configs") as batch:
        batch.add_column(
            sa.Column("concurrency_limit", sa.Integer(), nullable=False, server_default="3")
        )
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("assignee_agent_id", sa.String(length=64), nullable=True))
        batch.create_index("ix_tasks_agent_load", ["tenant_id", "assignee_agent_id", "status"])


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_index("ix_tasks_agent_load")
        batch.drop_column("assignee_agent_id")
    with op.batch_alter_table("agent_configs") as batch:
        batch.drop_column("concurrency_limit")
