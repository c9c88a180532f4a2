"""model-backed agents: a tenant's model and temperature per agent, each decision's model,
tokens and duration, the listings of chats with agents and of playbook runs, and each
connection's place in its vendor's rate limit

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

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
    op.create_table(
        "agent_chats",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=False),
        sa.Column("started_by", sa.Uuid(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("open", "ended", name="chatstatus", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("messages", sa.Integer(), nullable=False),
        sa.Column("created_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_agent_chats_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_chats")),
    )
    op.create_index(
        "ix_agent_chats_listing", "agent_chats", ["tenant_id", "started_by", "created_at"]
    )

    op.create_table(
        "playbook_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("playbook_id", sa.String(length=64), nullable=False),
        sa.Column("started_by", sa.Uuid(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "running",
                "paused",
                "completed",
                "failed",
                "cancelled",
                name="playbookstatus",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("current", sa.String(length=40), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_playbook_runs_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_playbook_runs")),
    )
    op.create_index("ix_playbook_runs_listing", "playbook_runs", ["tenant_id", "created_at", "id"])
    op.create_table(
        "connection_pacing",
        sa.Column("connection_id", sa.Uuid(), nullable=False),
        sa.Column("arrival", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_connection_pacing_connection_id_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("connection_id", name=op.f("pk_connection_pacing")),
    )


def downgrade() -> None:
    op.drop_table("connection_pacing")
    op.drop_index("ix_playbook_runs_listing", table_name="playbook_runs")
    op.drop_table("playbook_runs")
    op.drop_index("ix_agent_chats_listing", table_name="agent_chats")
    op.drop_table("agent_chats")
    with op.batch_alter_table("agent_decisions") as batch:
        batch.drop_column("duration_ms")
        batch.drop_column("tokens")
        batch.drop_column("model")
    with op.batch_alter_table("agent_configs") as batch:
        batch.drop_column("temperature")
        batch.drop_column("model")
