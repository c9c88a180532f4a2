"""AI agents: tenants' agent configurations, the runs' listing projection and the decision log

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_RUN_STATUSES = ("running", "awaiting_review", "applying", "completed", "failed")
_OUTCOMES = ("no_action", "applied", "approved", "rejected", "expired", "failed")


def _when(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, models.base.UTCDateTime(timezone=True), nullable=nullable)


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"], ["tenants.id"], name=op.f(f"fk_{table}_tenant_id_tenants"),
        ondelete="CASCADE",
    )  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "agent_configs",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("confidence_threshold", sa.Double(), nullable=False),
        sa.Column("allowed_tools", sa.JSON(), nullable=True),
        sa.Column("always_review", sa.Boolean(), nullable=False),
        sa.Column("max_steps", sa.Integer(), nullable=False),
        sa.Column("run_token_budget", sa.Integer(), nullable=True),
        sa.Column("monthly_token_budget", sa.Integer(), nullable=True),
        sa.Column("updated_by", sa.Uuid(), nullable=True),
        _when("created_at", nullable=False),
        _when("updated_at", nullable=False),
        _tenant_fk("agent_configs"),
        sa.PrimaryKeyConstraint("tenant_id", "agent_id", name=op.f("pk_agent_configs")),
    )
    op.create_table(
        "agent_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=False),
        sa.Column("started_by", sa.Uuid(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(*_RUN_STATUSES, name="agentrunstatus", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("approval_id", sa.Uuid(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _when("created_at", nullable=False),
        _when("updated_at", nullable=False),
        _when("finished_at"),
        _tenant_fk("agent_runs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_runs")),
    )
    op.create_index("ix_agent_runs_listing", "agent_runs", ["tenant_id", "created_at", "id"])
    op.create_index(
        "ix_agent_runs_agent_listing", "agent_runs", ["tenant_id", "agent_id", "created_at", "id"]
    )
    op.create_table(
        "agent_decisions",
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=False),
        _when("decided_at", nullable=False),
        sa.Column("input_summary", sa.String(length=500), nullable=False),
        sa.Column("confidence", sa.Double(), nullable=True),
        sa.Column("rationale", sa.Text(), nullable=True),
        sa.Column("output", sa.JSON(), nullable=True),
        sa.Column("writes", sa.JSON(), nullable=False),
        sa.Column(
            "outcome",
            sa.Enum(*_OUTCOMES, name="decisionoutcome", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("approval_id", sa.Uuid(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _tenant_fk("agent_decisions"),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_agent_decisions")),
    )
    op.create_index(
        "ix_agent_decisions_log", "agent_decisions", ["tenant_id", "decided_at", "run_id"]
    )
    op.create_index(
        "ix_agent_decisions_agent_log",
        "agent_decisions",
        ["tenant_id", "agent_id", "decided_at", "run_id"],
    )


def downgrade() -> None:
    op.drop_table("agent_decisions")
    op.drop_table("agent_runs")
    op.drop_table("agent_configs")
