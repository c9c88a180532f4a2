"""Bad input: every malformed, oversized or hostile request is a clear 4xx, and nothing is written.

Each case is sent to the API in process (real worker, dev server and database); the suite counts
the rows of the identity and audit tables before and after, and prints its figures.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select

from api.problems import MEDIA_TYPE
from core.db import SessionFactory
from core.settings import Settings
from models.audit import AuditEntry
from models.identity import AuthSession
from models.tenant import Tenant
from models.user import Role, User
from tests.factories import Member, member
from tests.security.conftest import Figures, Served

PASSWORD = "orbit-velvet-canyon-42"


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    kwargs: dict[str, Any]
    expected: frozenset[int]
    as_admin: bool = False


def _register(**override: Any) -> dict[str, Any]:
    body = {
        "email": "bad-input@example.com",
        "password": PASSWORD,
        "full_name": "Ada Owner",
        "company_name": "Bad Input Ltd",
    }
    return body | override


def _nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


async def _chunks(total: int) -> AsyncIterator[bytes]:
    # A body streamed without Content-Length (chunked): the cap must count as it arrives.
    sent = 0
    while sent < total:
        yield b" " * 65536
        sent += 65536


def _cases(max_body: int) -> list[Case]:
    register = "/api/v1/auth/register"
    company = "/api/v1/onboarding/steps/company"
    json_type = {"Content-Type": "application/json"}
    return [
        Case("malformed JSON", "POST", register, {"content": b'{"email": ', "headers": json_type},
             frozenset({422})),
        Case("JSON of the wrong type", "POST", register, {"json": [1, 2, 3]}, frozenset({422})),
        Case("deep nesting past the parser", "POST", register,
             {"content": _nested(100_000).encode(), "headers": json_type},
             frozenset({400, 413, 422})),
        Case("deep nesting in wizard data", "PUT", company,
             {"content": _nested(5_000).encode(), "headers": json_type}, frozenset({400, 422}),
             as_admin=True),
        Case("nesting the parser accepts", "PUT", company,
             {"json": {"legal_name": "X", "extra": json.loads(_nested(500))}}, frozenset({422}),
             as_admin=True),
        Case("huge body with Content-Length", "POST", register,
             {"content": b" " * (max_body + 1), "headers": json_type}, frozenset({413})),
        Case("huge chunked body", "POST", register,
             {"content": _chunks(max_body * 2), "headers": json_type}, frozenset({413})),
        Case("lying Content-Length", "POST", register,
             {"content": b"{}", "headers": {**json_type, "Content-Length": "abc"}},
             frozenset({400, 413})),
        Case("text/plain body", "POST", register,
             {"content": json.dumps(_register()).encode(),
              "headers": {"Content-Type": "text/plain"}},
             frozenset({415, 422})),
        Case("form body", "POST", register, {"data": {"email": "x@example.com"}},
             frozenset({415, 422})),
        Case("invalid UTF-8", "POST", register,
             {"content": b'{"email": "\xff\xfe@example.com"}', "headers": json_type},
             frozenset({400, 422})),
        Case("UTF-8-encoded surrogate", "POST", register,
             {"content": b'{"full_name": "\xed\xa0\x80"}', "headers": json_type},
             frozenset({400, 422})),
        Case("escaped lone surrogate in a name", "POST", register,
             {"content": json.dumps(_register(full_name="A\ud800")).encode(), "headers": json_type},
             frozenset({422})),
        Case("lone surrogate in wizard data", "PUT", company,
             {"content": b'{"legal_name": "\\ud800", "industry": "Retail", "country": "DE"}',
              "headers": json_type}, frozenset({422}), as_admin=True),
        Case("lone surrogate in a wizard key", "PUT", company,
             {"content": b'{"\\udfff": 1}', "headers": json_type}, frozenset({422}), as_admin=True),
        Case("NaN and Infinity", "PUT", "/api/v1/onboarding/steps/goals",
             {"content": b'{"primary_goal": "lead_gen", "monthly_budget": NaN, "currency": "EUR",'
                         b' "x": Infinity}', "headers": json_type}, frozenset({422}),
             as_admin=True),
        Case("NUL in a name", "POST", register, {"json": _register(full_name="Ada\x00Owner")},
             frozenset({422})),
        Case("NUL in a company name", "POST", register,
             {"json": _register(company_name="Bad\x00Input")}, frozenset({422})),
        Case("NUL in wizard data", "PUT", company,
             {"json": {"legal_name": "Bad\x00Input", "industry": "Retail", "country": "DE"}},
             frozenset({422}), as_admin=True),
        Case("NUL in an invitee's name", "POST", "/api/v1/users",
             {"json": {"email": "invitee@example.com", "full_name": "In\x00vitee"}},
             frozenset({422}), as_admin=True),
        Case("NUL in a path parameter", "GET", "/api/v1/auth/sso/goo%00gle/login", {},
             frozenset({404, 422})),
        Case("129-character password", "POST", "/api/v1/auth/login",
             {"json": {"email": "someone@example.com", "password": "p" * 129}}, frozenset({422})),
        Case("128 characters and surrounding spaces", "POST", register,
             {"json": _register(password=" " + "orbit-velvet-canyon-42!" * 5 + "x" * 12 + " ")},
             frozenset({422})),
        Case("huge audit limit", "GET", "/api/v1/audit", {"params": {"limit": "100000000"}},
             frozenset({422}), as_admin=True),
        Case("audit cursor past 64 bits", "GET", "/api/v1/audit",
             {"params": {"cursor": "9223372036854775808"}}, frozenset({422}), as_admin=True),
        Case("audit cursor 1e30", "GET", "/api/v1/audit", {"params": {"cursor": "1e30"}},
             frozenset({422}), as_admin=True),
        Case("negative audit cursor", "GET", "/api/v1/audit", {"params": {"cursor": "-1"}},
             frozenset({422}), as_admin=True),
        Case("huge approvals limit", "GET", "/api/v1/approvals",
             {"params": {"limit": str(2**70)}}, frozenset({422}), as_admin=True),
        Case("forged approvals cursor", "GET", "/api/v1/approvals",
             {"params": {"cursor": "x" * 5000}}, frozenset({422}), as_admin=True),
        Case("huge invoices limit", "GET", "/api/v1/billing/invoices",
             {"params": {"limit": "1e30"}}, frozenset({422}), as_admin=True),
        Case("wrong method", "DELETE", register, {}, frozenset({405})),
    ]  # fmt: skip


async def _counts(sessions: SessionFactory) -> dict[str, int]:
    async with sessions() as session:
        return {
            model.__tablename__: int(
                await session.scalar(select(func.count()).select_from(model)) or 0
            )
            for model in (User, Tenant, AuthSession, AuditEntry)
        }


async def test_bad_input_is_refused_and_nothing_is_written(
    served: Served, sessions: SessionFactory, settings: Settings, figures: Figures
) -> None:
    admin: Member = await member(sessions, settings, Role.TENANT_ADMIN)
    before = await _counts(sessions)
    for case in _cases(settings.max_body_bytes):
        kwargs = dict(case.kwargs)
        if case.as_admin:
            kwargs["headers"] = {**kwargs.get("headers", {}), **admin.headers}
        response = await served.client.request(case.method, case.path, **kwargs)
        figures.count(response.status_code)
        problem = f"{case.name}: {response.status_code} {response.text[:300]}"
        if response.status_code not in case.expected:
            figures.failures.append(problem)
            continue
        if response.headers.get("content-type") != MEDIA_TYPE:
            figures.failures.append(f"{case.name}: not a problem document: {problem}")
            continue
        body = response.json()
        if body["status"] != response.status_code or not body["detail"]:
            figures.failures.append(f"{case.name}: unclear problem: {problem}")
        if response.status_code == 422 and not body.get("errors"):
            figures.failures.append(f"{case.name}: 422 without field errors: {problem}")
        if response.status_code == 405 and "POST" not in response.headers.get("allow", ""):
            figures.failures.append(f"{case.name}: 405 without Allow: {problem}")
    assert figures.failures == []
    assert figures.server_errors == 0
    assert await _counts(sessions) == before, "a refused request wrote something"


@pytest.mark.parametrize("padding", [" ", "\t", "  \n"])
async def test_passwords_are_taken_as_typed(served: Served, padding: str, figures: Figures) -> None:
    """Surrounding whitespace is part of the password: no stripping at sign-up or sign-in."""
    password = padding + PASSWORD + padding
    email = f"typed-{len(padding)}-{ord(padding[0])}@example.com"
    body = _register(email=email, password=password)
    created = await served.client.post("/api/v1/auth/register", json=body)
    figures.count(created.status_code)
    assert created.status_code == 201, created.text
    for attempt, expected in ((PASSWORD, 401), (password, 200)):
        login = await served.client.post(
            "/api/v1/auth/login", json={"email": email, "password": attempt}
        )
        figures.count(login.status_code)
        assert login.status_code == expected, login.text
