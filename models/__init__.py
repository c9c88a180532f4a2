"""Tables and the types that cross workflow boundaries.

Importing this package registers every table on ``Base.metadata`` (Alembic relies on it).
"""

from models.audit import AuditEntry
from models.base import Base
from models.tenant import Tenant, TenantStatus
from models.user import Membership, Role, User

__all__ = ["AuditEntry", "Base", "Membership", "Role", "Tenant", "TenantStatus", "User"]
