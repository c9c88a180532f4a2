"""content publishing: the content items' listing projection and the tenants' publishing settings

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_STATUSES = (
    "draft", "in_review", "scheduled", "publishing", "waiting_for_connection", "published",
    "unpublishing", "unpublished", "failed",
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "content_items",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("connection_id", sa.Uuid(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=False),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column(
            "status",
            sa.Enum(*_STATUSES, name="contentstatus", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("publish_at", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("post_id", sa.String(length=64), nullable=True),
        sa.Column("url", sa.String(length=2000), nullable=True),
        sa.Column("slug", sa.String(length=200), nullable=True),
        sa.Column("published_at", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("approval_id", sa.Uuid(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_content_items_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["connection_id"], ["connections.id"],
            name=op.f("fk_content_items_connection_id_connections"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_content_items")),
    )  # fmt: skip
    op.create_index("ix_content_items_listing", "content_items", ["tenant_id", "updated_at", "id"])
    op.create_index(
        "ix_content_items_status_listing",
        "content_items",
        ["tenant_id", "status", "updated_at", "id"],
    )
    op.create_index("ix_content_items_connection", "content_items", ["connection_id", "status"])
    op.create_table(
        "content_policies",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("review_required", sa.Boolean(), nullable=False),
        sa.Column("remind_after", sa.Interval(), nullable=False),
        sa.Column("escalate_after", sa.Interval(), nullable=False),
        sa.Column("expire_after", sa.Interval(), nullable=False),
        sa.Column("created_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_content_policies_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_content_policies")),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_table("content_policies")
    op.drop_index("ix_content_items_connection", table_name="content_items")
    op.drop_index("ix_content_items_status_listing", table_name="content_items")
    op.drop_index("ix_content_items_listing", table_name="content_items")
    op.drop_table("content_items")
