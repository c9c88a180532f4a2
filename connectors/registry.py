"""The connector registry: which vendors exist, what they can do, how to connect them.

Adding a vendor: write ``connectors/<kind>/<vendor>.py`` with a ``SPEC = ConnectorSpec(...)``
whose ``factory`` builds the connector, and add the module's name to :data:`VENDOR_MODULES`.

Each spec describes the connection form for the frontend (:meth:`ConnectorSpec.form_schema`: a
JSON schema of the vendor's non-secret settings plus, except for OAuth, its secret fields, marked
``writeOnly`` and ``format: password``), the auth kinds it accepts, its default rate limit and,
for OAuth vendors, the provider's endpoints. :func:`open_connector` turns a spec id, settings,
credentials and the shared HTTP client into a port instance.

Workflow modules must not import this module (it imports every vendor module and httpx):
activities resolve connectors, workflows carry connection ids.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any, Literal, cast, get_args

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from connectors.analytics import AnalyticsPort
from connectors.cms import CMSPort
from connectors.commerce import CommercePort
from connectors.crm import CRMPort
from connectors.http import DEFAULT_MAX_RESPONSE_BYTES, connector_client
from connectors.ports import Connector

#: One line per vendor: the module that defines its ``SPEC``.
VENDOR_MODULES: tuple[str, ...] = (
    "connectors.cms.wordpress",
    "connectors.commerce.woocommerce",
    "connectors.commerce.shopify",
    "connectors.crm.hubspot",
    "connectors.crm.zoho",
    "connectors.analytics.ga4",
)

ConnectorKind = Literal["cms", "crm", "commerce", "analytics"]
AuthKind = Literal[
    "api_key", "application_password", "oauth2_authorization_code", "service_account"
]

PORTS: dict[ConnectorKind, type[Any]] = {
    "cms": CMSPort,
    "crm": CRMPort,
    "commerce": CommercePort,
    "analytics": AnalyticsPort,
}


def port_methods(kind: ConnectorKind) -> frozenset[str]:
    """The methods of a kind's port (its capabilities when a vendor supports them all)."""
    common = {"verify", "revoke"}
    port = PORTS[kind]
    return frozenset(
        name
        for name, member in inspect.getmembers(port, inspect.isfunction)
        if not name.startswith("_") and name not in common
    )


# --- Settings and credentials ---------------------------------------------------------------


class ConnectionSettings(BaseModel):
    """A connection's non-secret settings; each vendor subclasses it (unknown fields refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Credentials(BaseModel):
    """Secret material for one connection; vendors subclass these to title their fields.

    Secrets are :class:`~pydantic.SecretStr` (masked in logs and reprs, ``writeOnly`` in the
    form schema); :func:`dump_credentials` reveals them for the secret store only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiKeyCredentials(Credentials):
    """An API key or access token; vendors that pair it with a secret add that field."""

    api_key: SecretStr = Field(json_schema_extra={"format": "password"}, min_length=1)


class ApplicationPasswordCredentials(Credentials):
    """A user name and an application password (WordPress)."""

    username: str = Field(min_length=1, max_length=200, title="User name")
    application_password: SecretStr = Field(
        min_length=1, title="Application password", json_schema_extra={"format": "password"}
    )


class OAuth2Credentials(Credentials):
    """Tokens from an OAuth 2.0 authorization code grant; ``extra`` keeps vendor fields of the
    token response that later calls need (Zoho's ``api_domain``)."""

    access_token: SecretStr
    refresh_token: SecretStr | None = None
    expires_at: datetime | None = None
    token_type: str = "Bearer"  # noqa: S105 - the scheme's name, not a secret
    scope: str | None = None
    extra: dict[str, str] = {}


class ServiceAccountCredentials(Credentials):
    """A service account's JSON key (Google)."""

    service_account_json: SecretStr = Field(
        title="Service account key (JSON)", json_schema_extra={"format": "password"}
    )

    @field_validator("service_account_json")
    @classmethod
    def _is_key(cls, value: SecretStr) -> SecretStr:
        try:
            key = json.loads(value.get_secret_value())
        except ValueError:
            raise ValueError("not a JSON key file") from None
        if not isinstance(key, dict) or not {"client_email", "private_key"} <= key.keys():
            raise ValueError("the key file lacks client_email or private_key")
        return value


CREDENTIAL_MODELS: dict[AuthKind, type[Credentials]] = {
    "api_key": ApiKeyCredentials,
    "application_password": ApplicationPasswordCredentials,
    "oauth2_authorization_code": OAuth2Credentials,
    "service_account": ServiceAccountCredentials,
}


def _is_secret(annotation: Any) -> bool:
    return annotation is SecretStr or SecretStr in get_args(annotation)


def dump_credentials(credentials: Credentials) -> dict[str, Any]:
    """The credentials as plain JSON data with the secrets revealed: for the secret store."""
    data: dict[str, Any] = credentials.model_dump(mode="json")
    for name, value in credentials:
        if isinstance(value, SecretStr):
            data[name] = value.get_secret_value()
    return data


# --- Specs ----------------------------------------------------------------------------------


class RateLimit(BaseModel):
    """How fast one connection may call its vendor by default: ``requests`` per ``per_seconds``
    and at most ``concurrency`` calls in flight."""

    model_config = ConfigDict(frozen=True)

    requests: int = Field(ge=1)
    per_seconds: float = Field(gt=0)
    concurrency: int = Field(default=4, ge=1)


class OAuthEndpoints(BaseModel):
    """An OAuth provider's endpoints. URLs may hold ``{setting}`` placeholders filled from the
    connection's settings (a region's accounts domain, say): see :meth:`resolve`."""

    model_config = ConfigDict(frozen=True)

    authorize_url: str
    token_url: str
    revoke_url: str | None = None
    scopes: tuple[str, ...] = ()
    #: Added to the authorize URL (``access_type=offline`` for a refresh token, say).
    authorize_params: dict[str, str] = {}

    def resolve(self, settings: ConnectionSettings) -> OAuthEndpoints:
        values = {k: str(v) for k, v in settings.model_dump(mode="json").items()}
        return self.model_copy(
            update={
                "authorize_url": self.authorize_url.format_map(values),
                "token_url": self.token_url.format_map(values),
                "revoke_url": self.revoke_url.format_map(values) if self.revoke_url else None,
            }
        )


@dataclass(frozen=True)
class OAuthClient:
    """This platform's OAuth application at a vendor (from settings, not per tenant)."""

    client_id: str
    client_secret: SecretStr


@dataclass(frozen=True)
class ConnectorContext:
    """What a connector gets from the platform besides its connection's settings.

    ``allow_private_urls`` mirrors ``BIZ_CONNECTOR_ALLOW_PRIVATE_URLS``.
    ``on_credentials_refreshed`` is awaited with new credentials when a connector refreshed an
    OAuth token, so the caller writes them back to the secret store.
    """

    allow_private_urls: bool = False
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    oauth_client: OAuthClient | None = None
    on_credentials_refreshed: Callable[[Credentials], Awaitable[None]] | None = None
    #: A vendor's fixed origins (``https://api.hubapi.com``) replaced by others: tests point
    #: them at vendor peers. Set by the platform only, never from a tenant's settings: these
    #: hosts receive the platform's OAuth client secret.
    vendor_origins: Mapping[str, str] = field(default_factory=dict)

    def vendor_url(self, url: str) -> str:
        """``url`` with its origin replaced when :attr:`vendor_origins` names it."""
        for origin, replacement in self.vendor_origins.items():
            if url == origin or url.startswith(origin + "/"):
                return replacement.rstrip("/") + url[len(origin) :]
        return url


#: Builds a connector: ``factory(settings, credentials, http, context)``, with the settings and
#: credentials already validated into the spec's models.
ConnectorFactory = Callable[[Any, Any, httpx.AsyncClient, ConnectorContext], Connector]


@dataclass(frozen=True)
class ConnectorSpec:
    """One vendor connector as the registry lists it."""

    id: str
    kind: ConnectorKind
    display_name: str
    #: The connection's non-secret settings (base URL, region...): the form's first part.
    settings_model: type[ConnectionSettings]
    #: Accepted auth kinds and their credential models; the first is the default.
    auth: Mapping[AuthKind, type[Credentials]]
    factory: ConnectorFactory = field(repr=False)
    rate_limit: RateLimit
    #: The port methods it implements; None: all of its kind's port.
    capabilities: frozenset[str] | None = None
    oauth: OAuthEndpoints | None = None
    description: str = ""
    docs_url: str | None = None

    def __post_init__(self) -> None:
        if not self.auth:
            raise ValueError(f"{self.id}: no auth kind")
        for kind, model in self.auth.items():
            if not issubclass(model, CREDENTIAL_MODELS[kind]):
                raise ValueError(
                    f"{self.id}: {kind} credentials must extend {CREDENTIAL_MODELS[kind].__name__}"
                )
            clash = set(self.settings_model.model_fields) & set(model.model_fields)
            if clash:
                raise ValueError(f"{self.id}: settings and credentials share {sorted(clash)}")
        if "oauth2_authorization_code" in self.auth and self.oauth is None:
            raise ValueError(f"{self.id}: an OAuth connector needs its endpoints")
        unknown = self.supported - port_methods(self.kind)
        if unknown:
            raise ValueError(f"{self.id}: not {self.kind} port methods: {sorted(unknown)}")

    @property
    def auth_kinds(self) -> tuple[AuthKind, ...]:
        return tuple(self.auth)

    @property
    def auth_kind(self) -> AuthKind:
        """The default auth kind."""
        return self.auth_kinds[0]

    @property
    def supported(self) -> frozenset[str]:
        return port_methods(self.kind) if self.capabilities is None else self.capabilities

    def credentials_model(self, auth_kind: AuthKind | None = None) -> type[Credentials]:
        kind = auth_kind or self.auth_kind
        try:
            return self.auth[kind]
        except KeyError:
            raise UnknownAuthKind(f"{self.id} does not accept {kind}") from None

    def form_schema(self, auth_kind: AuthKind | None = None) -> dict[str, Any]:
        """The connection form as one JSON schema (draft 2020-12, pydantic's dialect).

        Settings fields, then, unless the auth kind is OAuth (its tokens come from the
        provider's consent screen), the credential fields; secrets are ``writeOnly`` with
        ``format: password`` so a form masks them and a read never returns them.
        """
        kind = auth_kind or self.auth_kind
        parts: list[type[BaseModel]] = [self.settings_model]
        if kind != "oauth2_authorization_code":
            parts.append(self.credentials_model(kind))
        properties: dict[str, Any] = {}
        required: list[str] = []
        defs: dict[str, Any] = {}
        for model in parts:
            schema = model.model_json_schema(ref_template="#/$defs/{model}")
            defs.update(schema.pop("$defs", {}))
            properties.update(schema.get("properties", {}))
            required.extend(schema.get("required", []))
            for name, info in model.model_fields.items():
                if name in properties and _is_secret(info.annotation):
                    # On the property itself (not only inside an anyOf): forms look here.
                    properties[name].update({"writeOnly": True, "format": "password"})
        form: dict[str, Any] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": self.display_name,
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }
        if defs:
            form["$defs"] = defs
        return form

    def split_form(
        self, data: Mapping[str, Any], auth_kind: AuthKind | None = None
    ) -> tuple[ConnectionSettings, Credentials | None]:
        """Validate a submitted form into settings and credentials (None for OAuth).

        Raises :class:`pydantic.ValidationError` for invalid or unknown fields.
        """
        kind = auth_kind or self.auth_kind
        if kind == "oauth2_authorization_code":
            # Settings models forbid unknown fields, so stray ones are refused here too.
            return self.settings_model.model_validate(dict(data)), None
        settings_fields = set(self.settings_model.model_fields)
        settings = self.settings_model.model_validate(
            {k: v for k, v in data.items() if k in settings_fields}
        )
        rest = {k: v for k, v in data.items() if k not in settings_fields}
        return settings, self.credentials_model(kind).model_validate(rest)

    def describe(self) -> dict[str, Any]:
        """The registry entry as JSON data (``GET /api/v1/connectors``)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "display_name": self.display_name,
            "description": self.description,
            "docs_url": self.docs_url,
            "capabilities": sorted(self.supported),
            "auth_kinds": list(self.auth_kinds),
            "forms": {kind: self.form_schema(kind) for kind in self.auth_kinds},
            "rate_limit": self.rate_limit.model_dump(),
            "oauth_scopes": list(self.oauth.scopes) if self.oauth else [],
        }


class UnknownConnector(LookupError):
    """No connector has this id."""


class UnknownAuthKind(ValueError):
    """The connector does not accept this auth kind."""


@cache
def _load() -> dict[str, ConnectorSpec]:
    specs: dict[str, ConnectorSpec] = {}
    for name in VENDOR_MODULES:
        spec = importlib.import_module(name).SPEC
        if not isinstance(spec, ConnectorSpec):
            raise TypeError(f"{name}.SPEC is not a ConnectorSpec")
        if spec.id in specs:
            raise ValueError(f"two connectors are called {spec.id!r}")
        specs[spec.id] = spec
    return specs


def all_specs() -> list[ConnectorSpec]:
    """Every registered connector, in registration order."""
    return list(_load().values())


def get_spec(spec_id: str) -> ConnectorSpec:
    try:
        return _load()[spec_id]
    except KeyError:
        raise UnknownConnector(f"no connector {spec_id!r}") from None


def open_connector(
    spec_id: str,
    settings: ConnectionSettings | Mapping[str, Any],
    credentials: Credentials | Mapping[str, Any],
    http: httpx.AsyncClient,
    context: ConnectorContext | None = None,
    *,
    auth_kind: AuthKind | None = None,
) -> Connector:
    """A connector for one connection. Settings and credentials may be models or the JSON
    data stored for the connection; both are validated against the spec's models (a
    :class:`pydantic.ValidationError` when they do not fit). ``http`` comes from
    :func:`connectors.http.connector_client` and stays the caller's to close."""
    spec = get_spec(spec_id)
    settings_model = spec.settings_model.model_validate(
        settings.model_dump() if isinstance(settings, ConnectionSettings) else settings
    )
    credentials_model = spec.credentials_model(auth_kind)
    creds = (
        credentials
        if isinstance(credentials, credentials_model)
        else credentials_model.model_validate(
            dump_credentials(credentials) if isinstance(credentials, Credentials) else credentials
        )
    )
    return spec.factory(settings_model, creds, http, context or ConnectorContext())


def _open_kind(kind: ConnectorKind, spec_id: str, *args: Any, **kwargs: Any) -> Connector:
    spec = get_spec(spec_id)
    if spec.kind != kind:
        raise UnknownConnector(f"{spec_id} is a {spec.kind} connector, not {kind}")
    return open_connector(spec_id, *args, **kwargs)


def open_cms(spec_id: str, *args: Any, **kwargs: Any) -> CMSPort:
    """:func:`open_connector` for a CMS connector, typed as its port."""
    return cast(CMSPort, _open_kind("cms", spec_id, *args, **kwargs))


def open_crm(spec_id: str, *args: Any, **kwargs: Any) -> CRMPort:
    return cast(CRMPort, _open_kind("crm", spec_id, *args, **kwargs))


def open_commerce(spec_id: str, *args: Any, **kwargs: Any) -> CommercePort:
    return cast(CommercePort, _open_kind("commerce", spec_id, *args, **kwargs))


def open_analytics(spec_id: str, *args: Any, **kwargs: Any) -> AnalyticsPort:
    return cast(AnalyticsPort, _open_kind("analytics", spec_id, *args, **kwargs))


def rate_limit(settings: Any, connector_id: str) -> RateLimit:
    """A connector's rate limit per connection: ``BIZ_CONNECTOR_RATE_LIMITS`` for it (a
    tenant's plan at the vendor allows more, or less), else the connector's default."""
    configured = settings.connector_rate_limits.get(connector_id)
    if configured is not None:
        return RateLimit.model_validate(configured)
    return get_spec(connector_id).rate_limit


def client_from_settings(settings: Any) -> httpx.AsyncClient:
    """The shared connector HTTP client configured by the process settings."""
    return connector_client(
        allow_private=settings.connector_allow_private_urls,
        timeout=httpx.Timeout(settings.connector_timeout_seconds, connect=5.0),
    )


def context_from_settings(
    settings: Any,
    *,
    oauth_client: OAuthClient | None = None,
    on_credentials_refreshed: Callable[[Credentials], Awaitable[None]] | None = None,
) -> ConnectorContext:
    """The context for connectors from the process settings (:class:`core.settings.Settings`)."""
    return ConnectorContext(
        allow_private_urls=settings.connector_allow_private_urls,
        max_response_bytes=settings.connector_max_response_bytes,
        oauth_client=oauth_client,
        on_credentials_refreshed=on_credentials_refreshed,
        vendor_origins=settings.connector_vendor_origins,
    )
