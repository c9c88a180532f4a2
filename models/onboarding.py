"""Tenant onboarding: the wizard's steps, its documents, and the state the frontend renders."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, StringConstraints

from models.approval import ApprovalStatus, DeadlinePolicy
from models.tenant import TenantStatus


class OnboardingStep(StrEnum):
    """The wizard's pages, in the order the frontend shows them."""

    COMPANY = "company"
    GOALS = "goals"
    PRESENCE = "presence"
    PLAN = "plan"


class OnboardingStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    PENDING_APPROVAL = "pending_approval"
    CHANGES_REQUESTED = "changes_requested"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"
    ABANDONED = "abandoned"  # never submitted in time: the tenant is cancelled, nothing reopens


# The wizard can be edited (and submitted) in these states.
EDITABLE = frozenset(
    {OnboardingStatus.IN_PROGRESS, OnboardingStatus.CHANGES_REQUESTED, OnboardingStatus.EXPIRED}
)


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]


class CompanyStep(_Step):
    legal_name: str = Field(min_length=2, max_length=200)
    industry: str = Field(min_length=2, max_length=100)
    website: HttpUrl | None = None
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")
    phone: str | None = Field(default=None, pattern=r"^\+?[0-9][0-9 ()./-]{5,24}$")
    description: str | None = Field(default=None, max_length=2000)


class PrimaryGoal(StrEnum):
    LEAD_GEN = "lead_gen"
    BRAND_AWARENESS = "brand_awareness"
    ECOMMERCE_SALES = "ecommerce_sales"
    APP_INSTALLS = "app_installs"


class GoalsStep(_Step):
    primary_goal: PrimaryGoal
    monthly_budget: Decimal = Field(ge=0, max_digits=14, decimal_places=2)
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217")


class PresenceStep(_Step):
    cms_type: Slug | None = None
    crm_type: Slug | None = None
    commerce_type: Slug | None = None


class PlanId(StrEnum):
    STARTER = "starter"
    PROFESSIONAL = "professional"
    BUSINESS = "business"
    ENTERPRISE = "enterprise"


class PlanStep(_Step):
    plan_id: PlanId
    # Billed by the month, or by the year at the plan's annual price.
    interval: Literal["month", "year"] = "month"


STEP_MODELS: dict[OnboardingStep, type[_Step]] = {
    OnboardingStep.COMPANY: CompanyStep,
    OnboardingStep.GOALS: GoalsStep,
    OnboardingStep.PRESENCE: PresenceStep,
    OnboardingStep.PLAN: PlanStep,
}


class StepData(BaseModel):
    """One wizard page as the frontend sent it; the workflow validates ``data``."""

    step: OnboardingStep
    data: dict[str, Any]


DocumentType = Literal["application/pdf", "image/png", "image/jpeg"]


class DocumentRequest(BaseModel):
    """What the frontend declares before uploading a supporting document."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    filename: str = Field(min_length=1, max_length=200, pattern=r"^[^/\\\x00-\x1f]+$")
    content_type: DocumentType
    size: int = Field(gt=0)


class DocumentUpload(DocumentRequest):
    """An upload the workflow expects: where the object goes."""

    document_id: uuid.UUID
    storage_key: str


class DocumentCheck(BaseModel):
    """The outcome of checking an uploaded object (existence, size, type by magic bytes).

    An accepted object was moved to ``sealed_key`` before it was checked, out of reach of its
    upload URL; that is where approvers read it."""

    document_id: uuid.UUID
    accepted: bool
    size: int | None = None
    sealed_key: str | None = None


class Document(DocumentUpload):
    """A supporting document of the application; ``stored`` once its object passed the checks.

    An announced document holds a slot until ``announced_at + upload_window``; past that,
    unless stored, it is forgotten."""

    stored: bool = False
    announced_at: datetime | None = None


def sealed_key(storage_key: str) -> str:
    """Where a checked document lives: a key no upload URL is ever issued for."""
    folder, _, name = storage_key.rpartition("/")
    return f"{folder}/checked/{name}"


class Submission(BaseModel):
    """Who submitted the wizard for approval."""

    submitted_by: uuid.UUID


class ApprovalView(BaseModel):
    """The current approval as the applicant sees it (no decider identity)."""

    approval_id: uuid.UUID
    status: ApprovalStatus
    reason: str | None = None
    decided_at: datetime | None = None


class OnboardingState(BaseModel):
    """What ``GET /api/v1/onboarding`` renders."""

    workflow_id: str
    tenant_id: uuid.UUID
    status: OnboardingStatus
    editable: bool
    current_step: OnboardingStep | None
    steps: dict[OnboardingStep, dict[str, Any]]
    missing: list[OnboardingStep]
    documents: list[Document]
    approval: ApprovalView | None = None


class WizardState(BaseModel):
    """What an open wizard holds, carried into a continued run."""

    status: OnboardingStatus
    steps: dict[OnboardingStep, dict[str, Any]]
    documents: list[Document]
    approval: ApprovalView | None
    abandon_at: datetime


class OnboardingInput(BaseModel):
    """Start of a tenant's onboarding; the limits come from settings when it starts."""

    tenant_id: uuid.UUID
    approval_policy: DeadlinePolicy = DeadlinePolicy()
    # An application nobody submits for this long is abandoned and the tenant cancelled.
    abandon_after: timedelta = timedelta(days=30)
    document_max_bytes: int = 10 * 1024 * 1024
    max_documents: int = 10
    # An announced document not uploaded within its upload URL's lifetime frees its slot.
    document_upload_window: timedelta = timedelta(minutes=5)
    # A wizard edited this many times continues as a new run (the server may ask sooner).
    history_limit: int = 2_000
    wizard: WizardState | None = None


class DuplicateQuery(BaseModel):
    tenant_id: uuid.UUID
    legal_name: str


class SimilarTenant(BaseModel):
    """An existing tenant whose name matches the applicant's legal name."""

    tenant_id: uuid.UUID
    name: str
    status: TenantStatus


class TenantTransition(BaseModel):
    """A tenant status change and its audit row, written once under ``idempotency_key``."""

    tenant_id: uuid.UUID
    status: TenantStatus
    action: str
    idempotency_key: str
    actor_id: uuid.UUID | None = None
    plan: PlanId | None = None
    data: dict[str, str] = Field(default_factory=dict)


class WelcomeEmail(BaseModel):
    """The welcome e-mail to a newly active tenant's admins; the key is fixed by the workflow."""

    tenant_id: uuid.UUID
    idempotency_key: str
