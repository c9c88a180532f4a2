"""Tables and the types that cross workflow boundaries.

Importing this package registers every table on ``Base.metadata`` (Alembic relies on it).
"""

from models.agent_chat import AgentChat
from models.agents import AgentConfig, AgentDecision, AgentRun
from models.approval import Approval
from models.audit import AuditEntry
from models.base import Base
from models.billing import (
    BillingPlan,
    Invoice,
    StripeEvent,
    Subscription,
    UsageEvent,
    UsageReport,
)
from models.connection import Connection, ConnectionHold, ConnectionPacing
from models.content import ContentItem, ContentPolicy
from models.email import OutboundEmail
from models.identity import AuthSession, RecoveryCode, RefreshToken, SsoIdentity
from models.playbooks import PlaybookRun
from models.sync import SyncMapping, SyncProfile, SyncRun
from models.tasks import Project, Task, TenantCalendar
from models.tenant import Tenant, TenantStatus
from models.user import Membership, Role, User

__all__ = [
    "AgentChat",
    "AgentConfig",
    "AgentDecision",
    "AgentRun",
    "Approval",
    "AuditEntry",
    "AuthSession",
    "Base",
    "BillingPlan",
    "Connection",
    "ConnectionHold",
    "ConnectionPacing",
    "ContentItem",
    "ContentPolicy",
    "Invoice",
    "Membership",
    "OutboundEmail",
    "PlaybookRun",
    "Project",
    "RecoveryCode",
    "RefreshToken",
    "Role",
    "SsoIdentity",
    "StripeEvent",
    "Subscription",
    "SyncMapping",
    "SyncProfile",
    "SyncRun",
    "Task",
    "Tenant",
    "TenantCalendar",
    "TenantStatus",
    "UsageEvent",
    "UsageReport",
    "User",
]
