"""Which workflows and activities the ``bizosaas`` task queue runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from activities.audit import AuditActivities
from core.db import SessionFactory
from core.settings import Settings
from workflows.audit_verification import AuditVerificationWorkflow

WORKFLOWS: Sequence[type] = (AuditVerificationWorkflow,)


def activities(sessions: SessionFactory, settings: Settings) -> list[Callable[..., Any]]:
    """Every activity, bound to its dependencies."""
    audit = AuditActivities(sessions)
    return [audit.verify_audit_chain, audit.record_tamper_finding]
