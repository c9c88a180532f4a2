"""invoice adjustments: the refunds, disputes and credit notes on a tenant's invoices

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "invoice_adjustments",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "refund",
                "dispute",
                "credit_note",
                name="adjustmentkind",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("stripe_id", sa.String(length=255), nullable=False),
        sa.Column("stripe_invoice_id", sa.String(length=100), nullable=True),
        sa.Column("stripe_charge_id", sa.String(length=255), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason", sa.String(length=100), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=True),
        sa.Column("as_of", sa.BigInteger(), nullable=False),
        sa.Column("created_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_invoice_adjustments_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoice_adjustments")),
        sa.UniqueConstraint(
            "kind", "stripe_id", name=op.f("uq_invoice_adjustments_kind_stripe_id")
        ),
    )
    op.create_index(
        "ix_invoice_adjustments_tenant_invoice",
        "invoice_adjustments",
        ["tenant_id", "stripe_invoice_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_invoice_adjustments_tenant_invoice", table_name="invoice_adjustments")
    op.drop_table("invoice_adjustments")
