"""Secrets in history: every workflow history the scenario produces holds none in plaintext.

The scenario drives, over HTTP, what puts secrets and personal data in play: sign-up, TOTP
enrolment and step-up of the approver, onboarding with a document to approval, billing through
localstripe (a SetupIntent's client secret), token refresh, an invitation and a password reset
confirmed with their e-mailed tokens, an invitation whose confirmation fails inside the workflow
(a failure in history), TOTP enrolment of the tenant admin, and an audit verification.

Every run on the test's task queue is then listed with the Temporal client and its stored
history scanned as the server keeps it (binary and JSON), and every base64 string in it decoded:
no password, token, TOTP secret, recovery code, client secret, signed URL, e-mail address or
name may appear. The credentials must not be in history even once decrypted (only digests and
hashes may be).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import email.message
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import httpx
import pyotp
import pytest
from google.protobuf import json_format
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecution
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from core.db import SessionFactory
from core.settings import Settings
from models.user import Role
from tests.api.flows import (
    PDF,
    decide,
    fill_wizard,
    onboarding_until,
    pending_approval,
    put_object,
    submit,
)
from tests.conftest import SmtpSink
from tests.factories import Member, member
from tests.history import decoded_history
from tests.peers_stripe import LocalStripe
from workers.main import build_worker

pytest_plugins = ["tests.peers_stripe"]

BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{12,}={0,2}")
FAILURE_EVENTS = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
}


@dataclass
class Secrets:
    """What the scenario used, by kind: credentials must never be in history, even decrypted;
    personal data only encrypted."""

    credentials: dict[str, str] = field(default_factory=dict)
    personal: dict[str, str] = field(default_factory=dict)

    def credential(self, what: str, value: str) -> str:
        self.credentials[what] = value
        return value

    def person(self, what: str, value: str) -> str:
        self.personal[what] = value
        return value

    def everything(self) -> dict[str, str]:
        return self.credentials | self.personal


@pytest.fixture
async def billed_api(
    smtp_settings: Settings,
    localstripe: LocalStripe,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    sessions: SessionFactory,
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    """API and worker with billing on localstripe, e-mail to the SMTP sink, local documents."""
    settings = localstripe.settings(smtp_settings)
    async with build_worker(temporal_env.client, sessions, settings):
        app = create_app(settings, temporal_env.client, engine)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client, settings


def _password(found: Secrets, what: str) -> str:
    return found.credential(what, f"Cobalt-{secrets.token_urlsafe(9)}-meadow")


def _body(message: email.message.Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


async def _link_token(sink: SmtpSink, address: str, kind: str) -> str:
    """The token of the link e-mailed to ``address`` (``kind``: reset-password or
    accept-invitation)."""
    pattern = re.compile(rf"/{kind}\?token=([0-9a-f]{{32}}\.[A-Za-z0-9_-]{{43}}(?:\.i)?)")
    for _ in range(200):
        for message in sink.to(address):
            found = pattern.search(_body(message))
            if found:
                return found.group(1)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} link reached {address}")


def _tokens(found: Secrets, what: str, response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    body = response.json()
    found.credential(f"{what} access token", body["access_token"])
    found.credential(f"{what} refresh token", body["refresh_token"])
    return {"Authorization": f"Bearer {body['access_token']}"}


async def _enrol_totp(
    api: httpx.AsyncClient, found: Secrets, who: str, headers: dict[str, str]
) -> pyotp.TOTP:
    setup = await api.post("/api/v1/auth/mfa/totp/setup", headers=headers)
    assert setup.status_code == 200, setup.text
    secret = found.credential(f"{who} TOTP secret", setup.json()["secret"])
    found.credential(f"{who} otpauth URI", setup.json()["otpauth_uri"])
    totp = pyotp.TOTP(secret)
    confirmed = await api.post(
        "/api/v1/auth/mfa/totp/confirm", json={"code": totp.now()}, headers=headers
    )
    assert confirmed.status_code == 200, confirmed.text
    for index, code in enumerate(confirmed.json()["recovery_codes"]):
        found.credential(f"{who} recovery code {index}", code)
    return totp


async def _scenario(
    api: httpx.AsyncClient,
    settings: Settings,
    sessions: SessionFactory,
    sink: SmtpSink,
    found: Secrets,
) -> uuid.UUID:
    """Drive every process that handles a secret; returns the tenant's id."""
    tag = secrets.token_hex(4)
    company = found.person("company", f"Quillfeather Botanicals {tag}")
    admin_email = found.person("admin e-mail", f"rosalind.{tag}@example.com")
    admin_name = found.person("admin name", f"Rosalind Fairweather-{tag}")
    password = _password(found, "admin password")
    registered = await api.post(
        "/api/v1/auth/register",
        json={
            "email": admin_email,
            "password": password,
            "full_name": admin_name,
            "company_name": company,
        },
    )
    assert registered.status_code == 201, registered.text
    tenant_id = uuid.UUID(registered.json()["tenant_id"])
    login = await api.post("/api/v1/auth/login", json={"email": admin_email, "password": password})
    admin = _tokens(found, "admin", login)

    # The approver enrols TOTP over HTTP and steps up with the next code, as deciding needs.
    staff_password = _password(found, "staff password")
    staff = await member(sessions, settings, Role.SUPER_ADMIN, password=staff_password)
    found.person("staff e-mail", staff.email)
    found.credential("staff access token", staff.access_token)
    found.credential("staff refresh token", staff.refresh_token)
    totp = await _enrol_totp(api, found, "staff", staff.headers)
    next_code = totp.at(datetime.now(UTC) + timedelta(seconds=30))
    stepped = await api.post(
        "/api/v1/auth/mfa/step-up", json={"code": next_code}, headers=staff.headers
    )
    _tokens(found, "staff stepped-up", stepped)
    approver = Member(
        staff.tenant_id,
        staff.user_id,
        staff.role,
        staff.email,
        found.credentials["staff stepped-up access token"],
        found.credentials["staff stepped-up refresh token"],
    )

    # Onboarding with a document, to approval (which provisions billing on localstripe).
    applicant = Member(
        tenant_id,
        uuid.UUID(registered.json()["user_id"]),
        Role.TENANT_ADMIN,
        admin_email,
        found.credentials["admin access token"],
        found.credentials["admin refresh token"],
    )
    await fill_wizard(api, applicant, company)
    ticket = await api.post(
        "/api/v1/onboarding/documents",
        json={"filename": "statutes.pdf", "content_type": "application/pdf", "size": len(PDF)},
        headers=admin,
    )
    assert ticket.status_code == 201, ticket.text
    upload = ticket.json()
    found.credential("document upload URL", urlsplit(upload["upload_url"]).path)
    stored = await put_object(api, upload["upload_url"], PDF, upload["headers"])
    assert stored.status_code == 200, stored.text
    completed = await api.post(
        f"/api/v1/onboarding/documents/{upload['document_id']}/complete", headers=admin
    )
    assert completed.status_code == 200, completed.text
    await submit(api, applicant)
    item = await pending_approval(api, approver, tenant_id)
    detail = await api.get(f"/api/v1/approvals/{item['approval_id']}", headers=approver.headers)
    for document in detail.json()["documents"]:
        link = await api.get(
            f"/api/v1/approvals/{item['approval_id']}/documents/{document['document_id']}",
            headers=approver.headers,
        )
        assert link.status_code == 200, link.text
        found.credential("document download URL", urlsplit(link.json()["url"]).path)
    decided = await decide(api, approver, item["approval_id"], "approve")
    assert decided.status_code == 200, decided.text
    await onboarding_until(api, applicant, "approved")

    refreshed = await api.post(
        "/api/v1/auth/refresh", json={"refresh_token": found.credentials["admin refresh token"]}
    )
    admin = _tokens(found, "admin refreshed", refreshed)
    await _payment_method(api, admin, found)

    # An invitation and a password reset, confirmed with the e-mailed tokens.
    invitee = await _invite(api, admin, found, "invitee", tag)
    token = found.credential(
        "invitation token", await _link_token(sink, invitee, "accept-invitation")
    )
    chosen = _password(found, "invitee password")
    await _confirm(api, token, chosen, 204)
    _tokens(
        found,
        "invitee",
        await api.post("/api/v1/auth/login", json={"email": invitee, "password": chosen}),
    )
    requested = await api.post("/api/v1/auth/password-reset", json={"email": admin_email})
    assert requested.status_code == 202, requested.text
    token = found.credential("reset token", await _link_token(sink, admin_email, "reset-password"))
    new_password = _password(found, "admin new password")
    await _confirm(api, token, new_password, 204)
    login = await api.post(
        "/api/v1/auth/login", json={"email": admin_email, "password": new_password}
    )
    admin = _tokens(found, "admin after reset", login)

    # A refusal inside a workflow (a failure in its history): a downgrade below the members
    # the tenant has, named in the failure's message and details.
    for who in ("second", "third"):
        await _invite(api, admin, found, who, tag)
    downgrade = await api.put(
        "/api/v1/billing/subscription/plan", json={"plan_id": "starter"}, headers=admin
    )
    assert downgrade.status_code == 409, downgrade.text
    assert downgrade.json()["type"].endswith("conflict"), downgrade.text

    await _enrol_totp(api, found, "admin", admin)
    verification = await api.post("/api/v1/audit/verifications", headers=admin)
    assert verification.status_code == 202, verification.text
    return tenant_id


async def _payment_method(api: httpx.AsyncClient, admin: dict[str, str], found: Secrets) -> None:
    """The SetupIntent's client secret, for Stripe.js; it must never be in history."""
    for _ in range(100):
        started = await api.post("/api/v1/billing/payment-method", headers=admin)
        if started.status_code != 409:  # the billing account is provisioned just after approval
            break
        await asyncio.sleep(0.1)
    assert started.status_code == 200, started.text
    found.credential("SetupIntent client secret", started.json()["client_secret"])


async def _invite(
    api: httpx.AsyncClient, admin: dict[str, str], found: Secrets, who: str, tag: str
) -> str:
    address = found.person(f"{who} e-mail", f"{who}.{tag}@example.com")
    name = found.person(f"{who} name", f"Peregrine Ashdown-{who}-{tag}")
    invited = await api.post(
        "/api/v1/users", json={"email": address, "full_name": name}, headers=admin
    )
    assert invited.status_code == 201, invited.text
    return address


async def _confirm(api: httpx.AsyncClient, token: str, password: str, status: int) -> None:
    confirmed = await api.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "new_password": password}
    )
    assert confirmed.status_code == status, confirmed.text


# --- The scan -----------------------------------------------------------------------------


@dataclass
class Scan:
    histories: int = 0
    events: int = 0
    failures: int = 0
    scanned_bytes: int = 0
    found: list[str] = field(default_factory=list)

    def line(self, searched: int) -> str:
        return (
            f"secrets in history: {self.histories} histories, {self.events} events "
            f"({self.failures} with failures), {self.scanned_bytes} bytes scanned, "
            f"{searched} secrets searched, {len(self.found)} found"
        )


def decoded_runs(blob: bytes) -> list[bytes]:
    """Every base64 string in ``blob``, decoded (standard and URL-safe alphabets)."""
    decoded = []
    for run in BASE64_RUN.findall(blob):
        padded = run.rstrip(b"=") + b"=" * (-len(run.rstrip(b"=")) % 4)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                decoded.append(decode(padded))
            except (binascii.Error, ValueError):
                continue
    return decoded


def search(
    blobs: list[bytes], wanted: dict[str, str], where: str, scan: Scan, *, count: bool = True
) -> None:
    for blob in blobs:
        if count:
            scan.scanned_bytes += len(blob)
        lowered = blob.lower()
        for what, value in wanted.items():
            if value.lower().encode() in lowered:
                scan.found.append(f"{what} in {where}")


async def _runs(client: Client, task_queue: str, expected: set[str]) -> list[WorkflowExecution]:
    """Every run on the test's task queue, once visibility lists all the expected ids."""
    listed: list[WorkflowExecution] = []
    for _ in range(100):
        listed = [run async for run in client.list_workflows(f'TaskQueue = "{task_queue}"')]
        if expected <= {run.id for run in listed}:
            return listed
        await asyncio.sleep(0.1)
    raise AssertionError(f"not listed: {expected - {run.id for run in listed}}")


def report(request: pytest.FixtureRequest, line: str) -> None:
    """Print a figure line on the terminal, past output capture, so it can be quoted."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}", flush=True)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_no_secret_in_any_history(
    billed_api: tuple[httpx.AsyncClient, Settings],
    sessions: SessionFactory,
    smtp_sink: SmtpSink,
    temporal_client: Client,
    task_queue: str,
    request: pytest.FixtureRequest,
) -> None:
    api, settings = billed_api
    found = Secrets()
    tenant_id = await _scenario(api, settings, sessions, smtp_sink, found)
    expected = {
        f"onboarding:{tenant_id}",
        f"billing:{tenant_id}",
        f"audit-verify:{tenant_id}",
    }
    runs = await _runs(temporal_client, task_queue, expected)
    processes = {run.workflow_type for run in runs}
    assert {"OnboardingWorkflow", "ApprovalWorkflow", "PasswordResetWorkflow"} <= processes
    assert "BillingWorkflow" in processes

    scan, control = Scan(), list[bool]()
    wanted = found.everything()
    for run in runs:
        scan.histories += 1
        history = await temporal_client.get_workflow_handle(
            run.id, run_id=run.run_id
        ).fetch_history()
        scan.events += len(history.events)
        scan.failures += sum(
            1
            for event in history.events
            if event.event_type in FAILURE_EVENTS
            and (event.HasField("activity_task_failed_event_attributes")
                 or event.workflow_execution_update_completed_event_attributes.outcome
                 .HasField("failure")
                 or event.HasField("workflow_task_failed_event_attributes")
                 or event.HasField("workflow_execution_failed_event_attributes")
                 or event.HasField("child_workflow_execution_failed_event_attributes"))
        )  # fmt: skip
        raw = [
            history.to_json().encode(),
            b"".join(event.SerializeToString() for event in history.events),
        ]
        where = f"{run.workflow_type} {run.id}"
        search(raw, wanted, f"{where} (raw)", scan)
        search(decoded_runs(raw[0]), wanted, f"{where} (base64-decoded)", scan)
        # What operators see besides history: search attributes, summary and details.
        described = await temporal_client.get_workflow_handle(run.id, run_id=run.run_id).describe()
        shown = json_format.MessageToJson(described.raw_description).encode()
        search([shown], wanted, f"{where} (description)", scan)
        search(decoded_runs(shown), wanted, f"{where} (description, base64-decoded)", scan)
        # Credentials are not even in the encrypted payloads: only digests and hashes are.
        plain = await decoded_history(temporal_client, run.id, run.run_id)
        search([plain], found.credentials, f"{where} (decrypted)", scan)
        # The control: decrypted, the wizard's data is there, so the search does find things.
        if run.workflow_type == "OnboardingWorkflow":
            control.append(found.personal["company"].encode() in plain)

    report(request, scan.line(len(wanted)))
    assert control, "no onboarding history was listed"
    assert all(control), "the company name is not even in the decrypted history"
    assert scan.failures > 0, "the scenario was meant to leave a failure in history"
    assert not scan.found, "\n".join(sorted(set(scan.found)))
