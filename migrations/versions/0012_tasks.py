"""projects and tasks: projects, the tasks projection, and tenants' business calendars

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_STATUSES = ("todo", "in_progress", "waiting", "review", "done", "cancelled")
_PRIORITIES = ("low", "normal", "high", "urgent")


def _when(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, models.base.UTCDateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("members", sa.JSON(), nullable=False),
        sa.Column("sla", sa.JSON(), nullable=False),
        _when("created_at", nullable=False),
        _when("updated_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_projects_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_projects")),
    )  # fmt: skip
    op.create_index("ix_projects_tenant_listing", "projects", ["tenant_id", "created_at", "id"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=False),
        _when("created_at", nullable=False),
        _when("updated_at", nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column(
            "status",
            sa.Enum(*_STATUSES, name="taskstatus", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column(
            "priority",
            sa.Enum(*_PRIORITIES, name="priority", native_enum=False, length=32),
            nullable=False,
        ),
        _when("due_at"),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("assignee_id", sa.Uuid(), nullable=True),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        _when("accept_due"),
        _when("response_due"),
        _when("resolution_due"),
        sa.Column("breached", sa.Boolean(), nullable=False),
        sa.Column("escalated", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tasks_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_tasks_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )  # fmt: skip
    op.create_index(
        "ix_tasks_project_listing", "tasks", ["tenant_id", "project_id", "updated_at", "id"]
    )
    op.create_index("ix_tasks_assignee", "tasks", ["tenant_id", "assignee_id", "status"])
    op.create_table(
        "tenant_calendars",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("calendar", sa.JSON(), nullable=False),
        _when("created_at", nullable=False),
        _when("updated_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_calendars_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_calendars")),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_table("tenant_calendars")
    op.drop_index("ix_tasks_assignee", table_name="tasks")
    op.drop_index("ix_tasks_project_listing", table_name="tasks")
    op.drop_table("tasks")
    op.drop_index("ix_projects_tenant_listing", table_name="projects")
    op.drop_table("projects")
