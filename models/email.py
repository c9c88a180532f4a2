"""Outgoing e-mail: the message type activities hand to the mailer, and the outbox table."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, EmailStr
from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, new_id, utcnow


class EmailMessage(BaseModel):
    """One e-mail; ``idempotency_key`` makes sending it twice a no-op."""

    idempotency_key: str
    to: EmailStr
    subject: str
    body: str
    tenant_id: uuid.UUID | None = None


class OutboundEmail(Base):
    """Every e-mail sent: the embedded default's delivery, and the SMTP path's duplicate guard."""

    __tablename__ = "outbound_emails"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    recipient: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
