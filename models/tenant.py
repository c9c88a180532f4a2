"""Tenants: the businesses and agencies on the platform."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, Timestamped, new_id, str_enum


class TenantStatus(StrEnum):
    ONBOARDING = "onboarding"
    PENDING_APPROVAL = "pending_approval"
    ACTIVE = "active"
    REJECTED = "rejected"
    SUSPENDED = "suspended"
    CANCELLED = "cancelled"


class Tenant(Timestamped, Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(80), unique=True)
    status: Mapped[TenantStatus] = mapped_column(
        str_enum(TenantStatus), default=TenantStatus.ONBOARDING
    )
    plan: Mapped[str | None] = mapped_column(String(32))
    # A plan change under way: until then, limits are the stricter of both plans' (so an
    # invitation racing a downgrade cannot take the tenant above the plan it moves to).
    plan_reserved: Mapped[str | None] = mapped_column(String(32))
    plan_reserved_until: Mapped[datetime | None]
