"""The OAuth 2.0 authorization code grant (RFC 6749 §4.1) for connectors whose vendors use it.

The platform's OAuth application at each vendor comes from settings (``BIZ_OAUTH_CLIENTS``);
the endpoints from the connector's spec (resolved with the connection's settings, e.g. a Zoho
data centre). Vendor-specific fields of the token response (Zoho's ``api_domain``) are kept in
the credentials' ``extra``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
from pydantic import BaseModel, SecretStr

from connectors.http import AuthFailed, json_body, send
from connectors.registry import (
    ConnectionSettings,
    ConnectorContext,
    ConnectorSpec,
    OAuth2Credentials,
    OAuthClient,
)

_TOKEN_FIELDS = {"access_token", "refresh_token", "expires_in", "token_type", "scope"}


class _TokenResponse(BaseModel):
    access_token: str
    refresh_token: str | None = None
    expires_in: int | None = None
    token_type: str = "Bearer"  # noqa: S105 - the scheme's name
    scope: str | None = None


def oauth_client(settings: Any, spec: ConnectorSpec) -> OAuthClient | None:
    """This platform's OAuth application at the connector's vendor, if configured."""
    configured = settings.oauth_clients.get(spec.id)
    if configured is None:
        return None
    return OAuthClient(client_id=configured.client_id, client_secret=configured.client_secret)


def authorize_url(
    spec: ConnectorSpec,
    settings: ConnectionSettings,
    client: OAuthClient,
    *,
    redirect_uri: str,
    state: str,
    context: ConnectorContext,
) -> str:
    """Where the tenant admin's browser goes to give consent."""
    assert spec.oauth is not None
    endpoints = spec.oauth.resolve(settings)
    query = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "state": state,
        **({"scope": " ".join(endpoints.scopes)} if endpoints.scopes else {}),
        **endpoints.authorize_params,
    }
    separator = "&" if "?" in endpoints.authorize_url else "?"
    return context.vendor_url(endpoints.authorize_url) + separator + urlencode(query)


async def exchange_code(
    spec: ConnectorSpec,
    settings: ConnectionSettings,
    client: OAuthClient,
    *,
    code: str,
    redirect_uri: str,
    http: httpx.AsyncClient,
    context: ConnectorContext,
) -> OAuth2Credentials:
    """Trade the authorization code for tokens at the vendor's token endpoint."""
    assert spec.oauth is not None
    token_url = context.vendor_url(spec.oauth.resolve(settings).token_url)
    request = http.build_request(
        "POST",
        token_url,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": client.client_id,
            "client_secret": client.client_secret.get_secret_value(),
        },
    )
    response = await send(http, request, vendor=spec.id, max_bytes=context.max_response_bytes)
    body = json_body(response, vendor=spec.id) if response.content else {}
    if response.status_code >= 400 or not isinstance(body, dict) or "error" in body:
        reason = body.get("error", response.status_code) if isinstance(body, dict) else "refused"
        raise AuthFailed(f"{spec.display_name} refused the authorization code ({reason})")
    token = _TokenResponse.model_validate(body)
    return OAuth2Credentials(
        access_token=SecretStr(token.access_token),
        refresh_token=SecretStr(token.refresh_token) if token.refresh_token else None,
        expires_at=datetime.now(UTC) + timedelta(seconds=token.expires_in)
        if token.expires_in
        else None,
        token_type=token.token_type,
        scope=token.scope,
        extra={k: str(v) for k, v in body.items() if k not in _TOKEN_FIELDS},
    )
