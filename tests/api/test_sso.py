"""Single sign-on end to end against a real OpenID provider (oidc-provider-mock).

Each test drives the browser's part with httpx: our login route, the provider's authorize page
and form, then our callback with the code and state the provider redirected to.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from connectors.sso import PROVIDERS, GitHub
from core.db import SessionFactory
from core.settings import Settings
from models.audit import AuditEntry
from models.identity import AuthSession, SsoIdentity
from models.tenant import Tenant
from models.user import User
from tests.factories import Member, member
from tests.peers.oidc import oidc_provider
from workflows.onboarding import workflow_id as onboarding_workflow_id

PROBLEM = "application/problem+json"
OIDC_SCOPES = ["openid", "email", "profile"]


@pytest.fixture(scope="session")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The OpenID provider on loopback for the whole session."""
    with oidc_provider(tmp_path_factory.mktemp("oidc")) as url:
        yield url


@pytest.fixture
def sso_settings(settings: Settings, issuer: str) -> Settings:
    """Every provider pointed at the test issuer; GitHub and Microsoft ask for OIDC scopes."""
    update: dict[str, Any] = {
        "public_api_url": "http://testserver",
        "sso_allow_insecure_http": True,
    }
    for name in PROVIDERS:
        update[f"sso_{name}_client_id"] = f"bizosaas-{name}"
        update[f"sso_{name}_client_secret"] = SecretStr(f"{name}-client-secret")
        update[f"sso_{name}_discovery_url"] = f"{issuer}/.well-known/openid-configuration"
    update["sso_github_scopes"] = update["sso_microsoft_scopes"] = OIDC_SCOPES
    return settings.model_copy(update=update)


@pytest.fixture
async def sso_api(
    sso_settings: Settings, temporal_env: WorkflowEnvironment, engine: AsyncEngine, worker: Worker
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(sso_settings, temporal_env.client, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def browser() -> AsyncIterator[httpx.AsyncClient]:
    """The person's browser as far as the provider's pages go."""
    async with httpx.AsyncClient() as client:
        yield client


@dataclass(frozen=True)
class Person:
    """Someone with an account at the provider: its ``sub`` there, and our e-mail for them."""

    sub: str
    email: str
    subject: str  # what the provider profile gives as the account id


def claims(provider: str, person: Person, *, verified: bool = True) -> dict[str, Any]:
    """A profile shaped like the provider's own userinfo answer."""
    if provider == "github":
        return {
            "id": int(person.subject),
            "login": "ada-l",
            "name": "Ada Lovelace",
            "email": person.email,
            "avatar_url": "https://avatars.example.com/u/1",
        }
    if provider == "microsoft":
        return {
            "id": person.subject,
            "mail": person.email,
            "displayName": "Ada Lovelace",
            "givenName": "Ada",
            "surname": "Lovelace",
            "email_verified": verified,
        }
    return {
        "email": person.email,
        "email_verified": verified,
        "name": "Ada Lovelace",
        "given_name": "Ada",
        "family_name": "Lovelace",
    }


async def at_provider(
    browser: httpx.AsyncClient,
    issuer: str,
    provider: str,
    *,
    email: str | None = None,
    verified: bool = True,
    profile: dict[str, Any] | None = None,
) -> Person:
    """Create (or replace) the person's account at the provider."""
    number = uuid.uuid4().int % 10**9
    sub = f"person-{number}"
    person = Person(
        sub=sub,
        email=email or f"ada-{number}@example.com",
        subject=str(number) if provider in ("github", "microsoft") else sub,
    )
    body = profile if profile is not None else claims(provider, person, verified=verified)
    response = await browser.put(f"{issuer}/users/{sub}", json=body)
    assert response.status_code == 204, response.text
    return person


async def consent(
    api: httpx.AsyncClient, browser: httpx.AsyncClient, provider: str, person: Person
) -> str:
    """Our login route, then the provider's sign-in form; returns the callback URL it sends."""
    login = await api.get(f"/api/v1/auth/sso/{provider}/login")
    assert login.status_code == 303, login.text
    assert "sso_state" in api.cookies
    authorize = login.headers["location"]
    page = await browser.get(authorize)
    assert page.status_code == 200
    assert "<form" in page.text
    answer = await browser.post(authorize, data={"sub": person.sub})
    assert answer.status_code == 302, answer.text
    callback = answer.headers["location"]
    assert callback.startswith(f"http://testserver/api/v1/auth/sso/{provider}/callback?")
    return callback


async def sign_in(
    api: httpx.AsyncClient, browser: httpx.AsyncClient, provider: str, person: Person
) -> httpx.Response:
    return await api.get(await consent(api, browser, provider, person))


async def tokens_work(api: httpx.AsyncClient, response: httpx.Response) -> dict[str, Any]:
    """The callback's tokens authenticate: a tenant admin's audit route answers (no run yet)."""
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert tokens["token_type"] == "bearer"
    assert tokens["refresh_token"]
    assert tokens["expires_in"] > 0
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    latest = await api.get("/api/v1/audit/verifications/latest", headers=headers)
    assert latest.status_code == 404
    assert latest.json()["detail"] == "No verification has run for this tenant."
    me = await api.get("/api/v1/auth/me", headers=headers)
    assert me.status_code == 200
    body: dict[str, Any] = me.json()
    return body


async def counts(sessions: SessionFactory) -> tuple[int, int, int, int]:
    """Rows of users, SSO links, sessions and audit entries: to show that nothing was written."""
    async with sessions() as session:
        return (
            await session.scalar(select(func.count()).select_from(User)) or 0,
            await session.scalar(select(func.count()).select_from(SsoIdentity)) or 0,
            await session.scalar(select(func.count()).select_from(AuthSession)) or 0,
            await session.scalar(select(func.count()).select_from(AuditEntry)) or 0,
        )


async def actions(sessions: SessionFactory, user_id: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
    async with sessions() as session:
        rows = await session.scalars(
            select(AuditEntry).where(AuditEntry.actor_id == user_id).order_by(AuditEntry.seq)
        )
        return [(row.action, row.data) for row in rows]


def assert_problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["type"].endswith(slug)


# --- Sign-up and sign-in, for each provider --------------------------------------------------


@pytest.mark.parametrize("provider", ["google", "github", "microsoft", "oidc"])
async def test_a_new_person_signs_up_and_signs_in_again(
    provider: str,
    sso_api: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    issuer: str,
    sessions: SessionFactory,
    temporal_env: WorkflowEnvironment,
) -> None:
    person = await at_provider(browser, issuer, provider)

    first = await sign_in(sso_api, browser, provider, person)

    me = await tokens_work(sso_api, first)
    assert me["email"] == person.email
    assert me["full_name"] == "Ada Lovelace"
    assert me["role"] == "tenant_admin"
    assert 'sso_state=""' in first.headers["set-cookie"]  # the state cookie is spent
    user_id = uuid.UUID(me["user_id"])
    async with sessions() as session:
        user = await session.get(User, user_id)
        tenant = await session.get(Tenant, uuid.UUID(me["tenant_id"]))
        links = (
            await session.scalars(select(SsoIdentity).where(SsoIdentity.user_id == user_id))
        ).all()
    assert user is not None
    assert user.password_hash is None
    assert tenant is not None
    assert tenant.name == "Ada Lovelace's company"
    assert tenant.status == "onboarding"
    onboarding = temporal_env.client.get_workflow_handle(onboarding_workflow_id(tenant.id))
    assert (await onboarding.describe()).status == WorkflowExecutionStatus.RUNNING
    assert [(link.provider, link.subject) for link in links] == [(provider, person.subject)]
    assert await actions(sessions, user_id) == [
        ("user.registered", {"method": "sso"}),
        ("user.sso_linked", {"provider": provider}),
        ("user.login", {"method": "sso", "provider": provider}),
    ]

    again = await sign_in(sso_api, browser, provider, person)

    assert (await tokens_work(sso_api, again))["user_id"] == str(user_id)
    assert [action for action, _ in await actions(sessions, user_id)][-1] == "user.login"
    async with sessions() as session:
        link_count = await session.scalar(
            select(func.count()).select_from(SsoIdentity).where(SsoIdentity.user_id == user_id)
        )
    assert link_count == 1


# --- Linking an existing account --------------------------------------------------------------


async def test_an_existing_user_is_linked_by_verified_email_and_the_link_is_reused(
    sso_api: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    issuer: str,
    sessions: SessionFactory,
    sso_settings: Settings,
) -> None:
    existing = await member(sessions, sso_settings)
    person = await at_provider(browser, issuer, "oidc", email=existing.email)

    me = await tokens_work(sso_api, await sign_in(sso_api, browser, "oidc", person))

    assert me["user_id"] == str(existing.user_id)
    assert me["tenant_id"] == str(existing.tenant_id)
    assert await actions(sessions, existing.user_id) == [
        ("user.sso_linked", {"provider": "oidc"}),
        ("user.login", {"method": "sso", "provider": "oidc"}),
    ]
    async with sessions() as session:
        linked = await session.scalar(
            select(SsoIdentity).where(
                SsoIdentity.provider == "oidc", SsoIdentity.subject == person.sub
            )
        )
    assert linked is not None
    assert linked.user_id == existing.user_id

    # The provider now reports another address: the link, not the e-mail, finds the account.
    await browser.put(
        f"{issuer}/users/{person.sub}",
        json=claims("oidc", Person(person.sub, "renamed@example.com", person.sub)),
    )
    again = await tokens_work(sso_api, await sign_in(sso_api, browser, "oidc", person))

    assert again["user_id"] == str(existing.user_id)
    assert [action for action, _ in await actions(sessions, existing.user_id)] == [
        "user.sso_linked",
        "user.login",
        "user.login",
    ]


async def test_an_unverified_email_neither_links_nor_signs_up(
    sso_api: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    issuer: str,
    sessions: SessionFactory,
    sso_settings: Settings,
) -> None:
    existing = await member(sessions, sso_settings)
    impostor = await at_provider(browser, issuer, "microsoft", email=existing.email, verified=False)
    stranger = await at_provider(browser, issuer, "oidc", verified=False)
    before = await counts(sessions)

    for provider, person in (("microsoft", impostor), ("oidc", stranger)):
        response = await sign_in(sso_api, browser, provider, person)
        assert_problem(response, 403, "sso-email-unverified")
        assert person.email in response.json()["detail"]

    assert await counts(sessions) == before


async def test_an_account_with_two_factor_authentication_is_not_linked_by_email(
    sso_api: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    issuer: str,
    sessions: SessionFactory,
    sso_settings: Settings,
) -> None:
    existing = await member(sessions, sso_settings, mfa_enabled=True)
    person = await at_provider(browser, issuer, "oidc", email=existing.email)
    before = await counts(sessions)

    response = await sign_in(sso_api, browser, "oidc", person)

    assert_problem(response, 403, "forbidden")
    assert "two-factor" in response.json()["detail"]
    assert await counts(sessions) == before


async def test_a_deactivated_user_is_refused(
    sso_api: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    issuer: str,
    sessions: SessionFactory,
    sso_settings: Settings,
) -> None:
    existing = await member(sessions, sso_settings)
    person = await at_provider(browser, issuer, "google", email=existing.email)
    await deactivate(sessions, existing)
    before = await counts(sessions)

    response = await sign_in(sso_api, browser, "google", person)

    assert_problem(response, 403, "forbidden")
    assert await counts(sessions) == before


async def test_a_linked_user_who_is_deactivated_is_refused(
    sso_api: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    issuer: str,
    sessions: SessionFactory,
    sso_settings: Settings,
) -> None:
    existing = await member(sessions, sso_settings)
    person = await at_provider(browser, issuer, "github", email=existing.email)
    await tokens_work(sso_api, await sign_in(sso_api, browser, "github", person))
    await deactivate(sessions, existing)
    before = await counts(sessions)

    response = await sign_in(sso_api, browser, "github", person)

    assert_problem(response, 403, "forbidden")
    assert await counts(sessions) == before


async def deactivate(sessions: SessionFactory, who: Member) -> None:
    async with sessions() as session:
        await session.execute(update(User).where(User.id == who.user_id).values(is_active=False))
        await session.commit()


# --- What the provider or the browser gets wrong ----------------------------------------------


async def test_a_replayed_code_is_refused_without_a_new_session(
    sso_api: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    issuer: str,
    sessions: SessionFactory,
    sso_settings: Settings,
) -> None:
    existing = await member(sessions, sso_settings)
    person = await at_provider(browser, issuer, "oidc", email=existing.email)
    callback = await consent(sso_api, browser, "oidc", person)
    await tokens_work(sso_api, await sso_api.get(callback))
    sso_api.cookies.set("sso_state", httpx.URL(callback).params["state"])
    before = await counts(sessions)

    replay = await sso_api.get(callback)

    assert_problem(replay, 401, "sso-rejected")
    assert "invalid_grant" in replay.json()["detail"]
    assert await counts(sessions) == before


async def test_a_state_that_does_not_match_the_cookie_is_refused(
    sso_api: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    issuer: str,
    sessions: SessionFactory,
) -> None:
    person = await at_provider(browser, issuer, "google")
    callback = httpx.URL(await consent(sso_api, browser, "google", person))
    forged = callback.copy_set_param("state", "forged-state")
    before = await counts(sessions)

    response = await sso_api.get(str(forged))
    assert_problem(response, 401, "sso-rejected")
    assert "Invalid state" in response.json()["detail"]

    sso_api.cookies.clear()
    response = await sso_api.get(str(callback))
    assert_problem(response, 401, "sso-rejected")
    assert "State cookie not found" in response.json()["detail"]
    assert await counts(sessions) == before


async def test_a_callback_without_a_code_or_after_a_refusal_is_a_bad_request(
    sso_api: httpx.AsyncClient, browser: httpx.AsyncClient, issuer: str
) -> None:
    missing = await sso_api.get("/api/v1/auth/sso/oidc/callback?state=abc")
    assert_problem(missing, 400, "sso-callback-invalid")
    assert "'code'" in missing.json()["detail"]

    login = await sso_api.get("/api/v1/auth/sso/oidc/login")
    denied = await browser.post(login.headers["location"], data={"action": "deny"})
    assert denied.status_code == 302
    response = await sso_api.get(denied.headers["location"])
    assert_problem(response, 400, "sso-callback-invalid")
    assert "access_denied" in response.json()["detail"]


async def test_a_profile_without_an_email_is_a_bad_request(
    sso_api: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    issuer: str,
    sessions: SessionFactory,
) -> None:
    # No public address, and the provider has no /emails list to fall back on.
    github = await at_provider(
        browser, issuer, "github", profile={"id": 77, "login": "ghost", "avatar_url": "x"}
    )
    oidc = await at_provider(browser, issuer, "oidc", profile={"name": "No Mail"})
    before = await counts(sessions)

    for provider, person in (("github", github), ("oidc", oidc)):
        response = await sign_in(sso_api, browser, provider, person)
        assert_problem(response, 400, "sso-callback-invalid")
        assert "no e-mail address" in response.json()["detail"]
    assert await counts(sessions) == before


async def test_unknown_or_unconfigured_providers_are_not_found(
    sso_api: httpx.AsyncClient, api: httpx.AsyncClient
) -> None:
    for path in ("/api/v1/auth/sso/facebook/login", "/api/v1/auth/sso/facebook/callback"):
        assert_problem(await sso_api.get(path), 404, "not-found")
    # The plain test settings configure no provider at all.
    for name in PROVIDERS:
        assert_problem(await api.get(f"/api/v1/auth/sso/{name}/login"), 404, "not-found")
        assert_problem(await api.get(f"/api/v1/auth/sso/{name}/callback?code=x"), 404, "not-found")


async def test_an_unreachable_provider_is_a_bad_gateway(
    sso_settings: Settings, temporal_env: WorkflowEnvironment, engine: AsyncEngine
) -> None:
    unreachable = sso_settings.model_copy(
        update={"sso_oidc_discovery_url": "http://127.0.0.1:1/.well-known/openid-configuration"}
    )
    app = create_app(unreachable, temporal_env.client, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/api/v1/auth/sso/oidc/login")
    assert_problem(response, 502, "sso-provider-unavailable")


def test_a_configured_provider_needs_its_secret_and_oidc_its_issuer() -> None:
    with pytest.raises(ValueError, match="BIZ_SSO_GITHUB_CLIENT_SECRET"):
        Settings(_env_file=None, sso_github_client_id="id")
    with pytest.raises(ValueError, match="BIZ_SSO_OIDC_DISCOVERY_URL"):
        Settings(_env_file=None, sso_oidc_client_id="id", sso_oidc_client_secret=SecretStr("s"))


@pytest.mark.parametrize(
    ("listed", "trusted"),
    [
        ([{"email": "a@example.com", "primary": True, "verified": True}], "a@example.com"),
        ([{"email": "a@example.com", "primary": True, "verified": False}], None),
        (
            [
                {"email": "b@example.com", "primary": False, "verified": True},
                {"email": "a@example.com", "primary": True, "verified": False},
            ],
            None,
        ),
        ({"message": "Requires authentication"}, None),
    ],
)
async def test_github_trusts_only_a_verified_primary_address(
    listed: object, trusted: str | None, issuer: str
) -> None:
    github = GitHub(client_id="bizosaas-github", client_secret="s", allow_insecure_http=True)
    github.discovery_url_override = f"{issuer}/.well-known/openid-configuration"
    asked: list[str] = []

    def emails(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(200, json=listed)

    async with httpx.AsyncClient(transport=httpx.MockTransport(emails)) as session:
        assert await github._get_primary_email(session) == trusted
    # /user/emails sits beside the userinfo endpoint, wherever the issuer is.
    assert asked == [f"{issuer}/userinfo/emails"]
