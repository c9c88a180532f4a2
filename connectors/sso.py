"""Single sign-on through fastapi-sso: Google, GitHub, Microsoft and a generic OIDC issuer.

Each provider is one class in :data:`PROVIDERS`, enabled and configured by settings alone
(``BIZ_SSO_<PROVIDER>_CLIENT_ID`` and friends). A discovery URL override points any of them at
another issuer: a self-hosted IdP, or a test one.

Who the person is comes from the provider's userinfo endpoint, called with the access token that
this server obtained itself from the token endpoint; the id token (whose signature fastapi-sso does
not check) is never read.

Which e-mail addresses count as verified, and so may sign up or be linked to an existing account:

- Google, Microsoft and generic OIDC: the address is verified when the profile says so with the
  ``email_verified`` claim (Microsoft also with ``xms_edov``, its "domain owner verified" claim).
  Microsoft Graph's ``/me`` sends neither, so against Microsoft's own endpoints only accounts
  already linked can sign in; an Entra ID issuer configured through the discovery override (its
  OIDC userinfo) may send them.
- GitHub: the profile's public e-mail (GitHub lets a user publish only a verified address), else
  the primary address from ``/user/emails`` only when GitHub marks it verified. An account with
  neither has no e-mail for us.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
import pydantic
from fastapi_sso import GithubSSO, GoogleSSO, MicrosoftSSO, OpenID, SSOBase, SSOLoginError
from fastapi_sso.sso.base import DiscoveryDocument
from oauthlib.oauth2 import OAuth2Error  # type: ignore[import-untyped]
from starlette.requests import Request
from starlette.responses import RedirectResponse

from core.errors import NotFound, Problem
from core.settings import Settings

log = logging.getLogger(__name__)
STATE_COOKIE = "sso_state"  # set by fastapi-sso's login redirect
_MAX_SUBJECT = 255  # the width of sso_identities.subject
_REQUIRED_ENDPOINTS = ("authorization_endpoint", "token_endpoint", "userinfo_endpoint")


class SsoCallbackInvalid(Problem):
    """The callback lacks what a sign-in needs (code, state, an e-mail address)."""

    status, slug, title = 400, "sso-callback-invalid", "Invalid single sign-on callback"


class SsoRejected(Problem):
    """The provider did not vouch for the person: bad or replayed code, state mismatch."""

    status, slug, title = 401, "sso-rejected", "Single sign-on failed"


class SsoEmailUnverified(Problem):
    """The provider has not verified the address, so it may not sign up or link an account."""

    status, slug, title = 403, "sso-email-unverified", "E-mail address not verified"


class SsoProviderUnavailable(Problem):
    """The provider could not be reached or answered something unusable."""

    status, slug, title = 502, "sso-provider-unavailable", "Sign-in provider unavailable"


@dataclass(frozen=True)
class SsoAccount:
    """The person signing in, as the provider describes them."""

    provider: str
    subject: str
    email: str
    email_verified: bool
    full_name: str


class ProviderProfile(OpenID):
    """fastapi-sso's profile plus what we decide on: verification and a display name."""

    email_verified: bool = False
    full_name: str | None = None


def _is_true(claim: object) -> bool:
    # Some issuers send booleans as strings.
    return claim is True or claim == "true"


async def _fetch_discovery(url: str) -> DiscoveryDocument:
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
        response.raise_for_status()
        document: DiscoveryDocument = response.json()
    missing = [key for key in _REQUIRED_ENDPOINTS if not document.get(key)]
    if missing:
        raise SsoProviderUnavailable(f"The discovery document at {url} lacks {', '.join(missing)}.")
    return document


class _Provider(SSOBase):
    """What every provider adds to fastapi-sso: the discovery override and the verified flag."""

    discovery_url_override: str | None = None
    _discovery: DiscoveryDocument | None = None

    async def get_discovery_document(self) -> DiscoveryDocument:
        """The provider's endpoints, fetched once per sign-in."""
        if self._discovery is None:
            if self.discovery_url_override is not None:
                self._discovery = await _fetch_discovery(self.discovery_url_override)
            else:
                self._discovery = await super().get_discovery_document()
        return self._discovery

    def vouches_for_email(self, response: dict[Any, Any], profile: OpenID) -> bool:
        """Whether the provider verified the profile's e-mail address."""
        return _is_true(response.get("email_verified"))

    async def openid_from_response(
        self, response: dict[Any, Any], session: httpx.AsyncClient | None = None
    ) -> OpenID:
        profile = await super().openid_from_response(response, session)
        name = response.get("name")
        return ProviderProfile(
            **profile.model_dump(),
            email_verified=profile.email is not None and self.vouches_for_email(response, profile),
            full_name=name if isinstance(name, str) and name.strip() else profile.display_name,
        )


class Google(_Provider, GoogleSSO):
    """Google accounts (fastapi-sso itself refuses an address Google has not verified)."""


class GitHub(_Provider, GithubSSO):
    """GitHub accounts; see the module docstring for which address is trusted."""

    def vouches_for_email(self, response: dict[Any, Any], profile: OpenID) -> bool:
        # The public profile address and the one _get_primary_email picks are both verified.
        return True

    async def _get_primary_email(self, session: httpx.AsyncClient | None = None) -> str | None:
        """The primary address, only if GitHub verified it.

        ``/user/emails`` sits beside the userinfo endpoint on github.com and on GitHub
        Enterprise Server alike, so it follows the discovery override.
        """
        if session is None:
            return None
        userinfo = await self.userinfo_endpoint
        response = await session.get(f"{str(userinfo).rstrip('/')}/emails")
        if response.status_code != httpx.codes.OK:
            return None
        emails = response.json()
        for entry in emails if isinstance(emails, list) else []:
            if isinstance(entry, dict) and entry.get("primary") and entry.get("verified"):
                return str(entry["email"])
        return None


class Microsoft(_Provider, MicrosoftSSO):
    """Microsoft accounts (Entra ID and personal) through Microsoft Graph."""

    def vouches_for_email(self, response: dict[Any, Any], profile: OpenID) -> bool:
        return _is_true(response.get("email_verified")) or _is_true(response.get("xms_edov"))


class _StandardClaims(SSOBase):
    """The OpenID Connect standard claims, for any compliant issuer."""

    provider = "oidc"
    scope: ClassVar[list[str]] = ["openid", "email", "profile"]

    async def openid_from_response(
        self, response: dict[Any, Any], session: httpx.AsyncClient | None = None
    ) -> OpenID:
        return OpenID(
            id=response.get("sub"),
            email=response.get("email"),
            first_name=response.get("given_name"),
            last_name=response.get("family_name"),
            display_name=response.get("name"),
            picture=response.get("picture"),
            provider=self.provider,
        )


class Oidc(_Provider, _StandardClaims):
    """Any OpenID Connect issuer, configured by its discovery URL."""


PROVIDERS: dict[str, type[_Provider]] = {
    "google": Google,
    "github": GitHub,
    "microsoft": Microsoft,
    "oidc": Oidc,
}


def callback_url(settings: Settings, name: str) -> str:
    return f"{settings.public_api_url.rstrip('/')}/api/v1/auth/sso/{name}/callback"


def _client(name: str, settings: Settings) -> _Provider:
    """A fresh fastapi-sso client for one sign-in step; 404 when unknown or not configured."""
    cls = PROVIDERS.get(name)
    client_id: str | None = getattr(settings, f"sso_{name}_client_id") if cls else None
    if cls is None or client_id is None:
        raise NotFound(f"Single sign-on with {name!r} is not available.")
    secret: pydantic.SecretStr | None = getattr(settings, f"sso_{name}_client_secret")
    client = cls(
        client_id=client_id,
        client_secret=secret.get_secret_value() if secret is not None else "",
        redirect_uri=callback_url(settings, name),
        allow_insecure_http=settings.sso_allow_insecure_http,
        scope=getattr(settings, f"sso_{name}_scopes"),
    )
    client.discovery_url_override = getattr(settings, f"sso_{name}_discovery_url")
    return client


async def login_redirect(name: str, settings: Settings) -> RedirectResponse:
    """The redirect to the provider's sign-in page, with the state bound to a cookie."""
    client = _client(name, settings)
    async with client:
        try:
            return await client.get_login_redirect()
        except (httpx.HTTPError, json.JSONDecodeError):
            log.warning("sso discovery for %s failed", name, exc_info=True)
            raise SsoProviderUnavailable(f"{name} cannot be reached; try again later.") from None


async def account_from_callback(name: str, settings: Settings, request: Request) -> SsoAccount:
    """Check the callback's state, redeem its code and read the profile.

    Every failure is a :class:`Problem` raised before anything is written.
    """
    client = _client(name, settings)
    refused = request.query_params.get("error")
    if refused:
        reason = request.query_params.get("error_description") or "no reason given"
        raise SsoCallbackInvalid(f"The sign-in at {name} was not completed ({refused}): {reason}")
    async with client:
        profile = await _verified_profile(client, name, request)
    return _account(name, profile)


async def _verified_profile(client: _Provider, name: str, request: Request) -> OpenID | None:
    try:
        return await client.verify_and_process(request)
    except SSOLoginError as exc:
        problem = SsoCallbackInvalid if exc.status_code == 400 else SsoRejected
        raise problem(f"Sign-in with {name} failed: {exc.detail}.") from None
    except OAuth2Error as exc:
        # An expired, forged or replayed code: the token endpoint says invalid_grant.
        reason = exc.description or exc.error
        raise SsoRejected(f"{name} rejected the sign-in ({exc.error}): {reason}") from None
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise SsoCallbackInvalid(
            f"{name} sent an unusable profile: {where}: {error['msg']}"
        ) from None
    except (httpx.HTTPError, json.JSONDecodeError, KeyError, TypeError):
        log.warning("sso callback for %s failed", name, exc_info=True)
        raise SsoProviderUnavailable(f"{name} answered unexpectedly; try again later.") from None


def _account(name: str, profile: OpenID | None) -> SsoAccount:
    if not isinstance(profile, ProviderProfile) or not profile.id or len(profile.id) > _MAX_SUBJECT:
        raise SsoRejected(f"{name} did not identify the account.")
    if not profile.email:
        raise SsoCallbackInvalid(
            f"{name} shared no e-mail address; allow access to your e-mail address and try again."
        )
    email = str(profile.email)
    full_name = profile.full_name or " ".join(
        part for part in (profile.first_name, profile.last_name) if part
    )
    return SsoAccount(
        provider=name,
        subject=str(profile.id),
        email=email,
        email_verified=profile.email_verified,
        full_name=(full_name or email.partition("@")[0]).strip()[:200],
    )
