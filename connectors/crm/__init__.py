"""The CRM port: a tenant's contacts, companies, deals (in pipeline stages) and activities.

Vendor modules (``connectors/crm/<vendor>.py``) implement :class:`CRMPort`. Identifiers are the
vendor's, as strings. ``external_id`` is this platform's own key for a record, kept in a field
at the vendor (a custom property), so a retried "create" can look up what an earlier attempt
made: writes are idempotent by ``find_*_by_external_id`` before ``create_*``.

:meth:`CRMPort.sync_contacts` is the incremental listing a sync reads, as the commerce port's
listings are: everything changed at or after ``updated_since``, oldest change first; a sync
keeps the largest ``updated_at`` it saw as the next run's ``updated_since``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from connectors.ports import Connector, ListQuery, Page, SyncPage, SyncQuery

ActivityKind = Literal["note", "call", "email", "meeting", "task"]


class Contact(BaseModel):
    id: str
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    job_title: str | None = None
    company_id: str | None = None
    owner_id: str | None = None
    external_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class ContactDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr | None = None
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=50)
    job_title: str | None = Field(default=None, max_length=200)
    company_id: str | None = None
    external_id: str | None = Field(default=None, max_length=100)


class ContactUpdate(BaseModel):
    """Changes to a contact: only the fields given are changed."""

    model_config = ConfigDict(extra="forbid")

    email: EmailStr | None = None
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=50)
    job_title: str | None = Field(default=None, max_length=200)
    company_id: str | None = None


class Company(BaseModel):
    id: str
    name: str
    domain: str | None = None
    phone: str | None = None
    industry: str | None = None
    owner_id: str | None = None
    external_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class CompanyDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    domain: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=50)
    industry: str | None = Field(default=None, max_length=200)
    external_id: str | None = Field(default=None, max_length=100)


class CompanyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    domain: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=50)
    industry: str | None = Field(default=None, max_length=200)


class PipelineStage(BaseModel):
    id: str
    name: str
    order: int = 0
    probability: float | None = Field(default=None, ge=0, le=1)
    closed: bool = False
    won: bool = False


class Pipeline(BaseModel):
    id: str
    name: str
    stages: list[PipelineStage]


class Deal(BaseModel):
    id: str
    name: str
    amount: Decimal | None = None
    currency: str | None = None
    pipeline_id: str | None = None
    stage_id: str
    close_date: date | None = None
    company_id: str | None = None
    contact_ids: list[str] = []
    owner_id: str | None = None
    external_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class DealDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    amount: Decimal | None = None
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    pipeline_id: str | None = None
    stage_id: str
    close_date: date | None = None
    company_id: str | None = None
    contact_ids: list[str] = []
    external_id: str | None = Field(default=None, max_length=100)


class DealUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    amount: Decimal | None = None
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    pipeline_id: str | None = None
    stage_id: str | None = None
    close_date: date | None = None


class RecordRef(BaseModel):
    """The CRM record an activity belongs to."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["contact", "company", "deal"]
    id: str


class Activity(BaseModel):
    """A note, call, e-mail, meeting or task logged against records."""

    id: str
    kind: ActivityKind
    subject: str | None = None
    body: str = ""
    occurred_at: datetime | None = None
    related: list[RecordRef] = []
    external_id: str | None = None


class ActivityDraft(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: ActivityKind = "note"
    subject: str | None = Field(default=None, max_length=500)
    body: str = Field(default="", max_length=65_000)
    occurred_at: datetime | None = None
    related: list[RecordRef] = Field(min_length=1)
    external_id: str | None = Field(default=None, max_length=100)


class ActivityQuery(ListQuery):
    """Activities of one record; without ``related``, the most recent ones of the account."""

    related: RecordRef | None = None


class CRMPort(Connector, Protocol):
    """A CRM's records. ``find_*`` return None when nothing matches."""

    async def list_contacts(self, query: ListQuery) -> Page[Contact]: ...

    async def sync_contacts(self, query: SyncQuery) -> SyncPage[Contact]:
        """Contacts changed at or after ``query.updated_since`` (all when None), oldest change
        first, each with ``updated_at``; ``next_cursor`` continues the listing. Records that do
        not parse go in ``unreadable`` (as the commerce listings do with
        :func:`~connectors.http.parse_records`)."""
        ...

    async def get_contact(self, contact_id: str) -> Contact: ...

    async def create_contact(self, draft: ContactDraft) -> Contact: ...

    async def update_contact(self, contact_id: str, update: ContactUpdate) -> Contact: ...

    async def find_contact_by_email(self, email: str) -> Contact | None: ...

    async def find_contact_by_external_id(self, external_id: str) -> Contact | None: ...

    async def find_contacts(
        self, external_ids: Sequence[str], emails: Sequence[str]
    ) -> list[Contact]:
        """The contacts whose external id or e-mail (ignoring case) is one of these, in as
        few requests as the vendor allows (a sync looks a whole page up at once)."""
        ...

    async def list_companies(self, query: ListQuery) -> Page[Company]: ...

    async def get_company(self, company_id: str) -> Company: ...

    async def create_company(self, draft: CompanyDraft) -> Company: ...

    async def update_company(self, company_id: str, update: CompanyUpdate) -> Company: ...

    async def find_company_by_external_id(self, external_id: str) -> Company | None: ...

    async def list_pipelines(self) -> list[Pipeline]:
        """The deal pipelines and their stages (what ``Deal.stage_id`` refers to)."""
        ...

    async def list_deals(self, query: ListQuery) -> Page[Deal]: ...

    async def get_deal(self, deal_id: str) -> Deal: ...

    async def create_deal(self, draft: DealDraft) -> Deal: ...

    async def update_deal(self, deal_id: str, update: DealUpdate) -> Deal: ...

    async def find_deal_by_external_id(self, external_id: str) -> Deal | None: ...

    async def list_activities(self, query: ActivityQuery) -> Page[Activity]: ...

    async def create_activity(self, draft: ActivityDraft) -> Activity: ...


__all__ = [
    "Activity",
    "ActivityDraft",
    "ActivityKind",
    "ActivityQuery",
    "CRMPort",
    "Company",
    "CompanyDraft",
    "CompanyUpdate",
    "Contact",
    "ContactDraft",
    "ContactUpdate",
    "Deal",
    "DealDraft",
    "DealUpdate",
    "Pipeline",
    "PipelineStage",
    "RecordRef",
]
