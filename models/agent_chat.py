"""Chats with a model-backed agent: a session is an ``AgentChatWorkflow`` (``chat:{session_id}``)
whose messages are updates answered with the agent's reply; its tool calls are the agent's, as
activities. What crosses the workflow boundary, and the sessions' listing table.

Nothing here does I/O: workflows import it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from models.agents import AgentRunConfig, ModelChoice, ToolRequest
from models.base import Base, str_enum

MAX_MESSAGE = 4_000


class ChatEntry(BaseModel):
    """One line of a transcript: a person's message, the agent's reply or tool calls, a tool's
    answer (``text`` is its JSON), or a turn that failed (``error``)."""

    at: datetime
    role: Literal["user", "assistant", "tool"]
    text: str | None = None
    tool_calls: list[ToolRequest] = Field(default_factory=list)
    tool: str | None = None
    call_id: str | None = None
    by: uuid.UUID | None = None
    tokens: int = 0
    error: bool = False


class ChatStatus(StrEnum):
    OPEN = "open"
    ENDED = "ended"


class ChatStart(BaseModel):
    """A session as it starts, or continues as a new run with its transcript so far."""

    session_id: uuid.UUID
    tenant_id: uuid.UUID
    agent_id: str
    started_by: uuid.UUID
    created_at: datetime
    input: dict[str, Any]
    config: AgentRunConfig
    transcript: list[ChatEntry] = Field(default_factory=list)
    tokens: int = 0
    earlier: int = Field(default=0, description="entries dropped at a continue-as-new")
    # Entries before the session continues as a new run, and how many it carries (tests lower
    # them).
    longest: int = 300
    kept: int = 100


class ChatState(BaseModel):
    """A session as its ``state`` query shows it."""

    session_id: uuid.UUID
    agent_id: str
    started_by: uuid.UUID
    created_at: datetime
    status: ChatStatus = ChatStatus.OPEN
    transcript: list[ChatEntry]
    tokens: int = 0
    earlier: int = 0
    ended_at: datetime | None = None
    ended_reason: str | None = None


class ChatMessage(BaseModel):
    """A person's message (the ``say`` update)."""

    text: str = Field(max_length=MAX_MESSAGE)
    by: uuid.UUID

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a message needs text")
        return value


class ChatEnd(BaseModel):
    """The person ends the session (the ``end`` update)."""

    by: uuid.UUID


class ChatTurnRequest(BaseModel):
    """One turn of the model in a chat (the ``chat_turn`` activity)."""

    tenant_id: uuid.UUID
    agent_id: str
    input: dict[str, Any]
    transcript: list[ChatEntry]
    model: ModelChoice
    tools: list[str]
    tokens_left: int | None = None


class ChatTurn(BaseModel):
    """The model's turn: its reply, or the tool calls to make first; what it cost."""

    text: str | None = None
    tool_calls: list[ToolRequest] = Field(default_factory=list)
    tokens: int = 0


class ChatRow(BaseModel):
    """What the listing keeps of a session."""

    session_id: uuid.UUID
    tenant_id: uuid.UUID
    agent_id: str
    started_by: uuid.UUID
    created_at: datetime
    status: ChatStatus
    messages: int
    ended_at: datetime | None = None


class AgentChat(Base):
    """The sessions' listing projection, written only by the session's workflow."""

    __tablename__ = "agent_chats"
    __table_args__ = (Index("ix_agent_chats_listing", "tenant_id", "started_by", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    agent_id: Mapped[str] = mapped_column(String(64))
    started_by: Mapped[uuid.UUID]
    status: Mapped[ChatStatus] = mapped_column(str_enum(ChatStatus))
    messages: Mapped[int]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
