"""Google Analytics 4 behind the analytics port: the Data API's ``runReport`` over async httpx.

Plain REST rather than Google's gRPC client (``google-analytics-data``): one request shape, the
platform's own HTTP client with its timeouts, size limit and SSRF guard, and the same typed
errors as every other connector.

Auth is either
- a **service account** the tenant added to its property as a viewer: the connector signs a JWT
  (RS256, ``kid`` = the key's id) with the account's private key and exchanges it at Google's
  token endpoint (``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``) for an hour-long
  access token, kept in memory only, since the key itself never changes
  (https://developers.google.com/identity/protocols/oauth2/service-account#httprest); or
- a user's **OAuth consent**, refreshed with the refresh token ahead of expiry and once when
  Google answers 401; new tokens go to ``on_refresh`` for the secret store
  (https://developers.google.com/identity/protocols/oauth2/web-server#offline).

Reports page with ``limit`` / ``offset``; ``rowCount`` counts the whole report
(https://developers.google.com/analytics/devguides/reporting/data/v1/basics#pagination). A cursor
remembers the offset and a digest of the query, so it cannot continue a different report.
Errors are Google's ``{"error": {code, message, status}}``; an exhausted property quota is a 429
``RESOURCE_EXHAUSTED`` (https://developers.google.com/analytics/devguides/reporting/data/v1/quotas).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import jwt
from pydantic import BaseModel, Field, SecretStr, ValidationError

from connectors.analytics import MetricHeader, MetricType, Report, ReportRequest, ReportRow
from connectors.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    AuthFailed,
    InvalidCursor,
    SchemaMismatch,
    error_for_status,
    json_body,
    parse_as,
    send,
)
from connectors.ports import AccountInfo, decode_cursor, encode_cursor
from connectors.registry import (
    ConnectionSettings,
    ConnectorContext,
    ConnectorSpec,
    Credentials,
    OAuth2Credentials,
    OAuthClient,
    OAuthEndpoints,
    RateLimit,
    ServiceAccountCredentials,
)

VENDOR = "ga4"
API_BASE = "https://analyticsdata.googleapis.com"
TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret
REVOKE_URI = "https://oauth2.googleapis.com/revoke"
AUTHORIZE_URL = "https://accounts.google.com/o/oauth2/v2/auth"
SCOPE = "https://www.googleapis.com/auth/analytics.readonly"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Refresh this long before Google's expiry, so a token never dies mid-request.
REFRESH_MARGIN = 120.0
_ASSERTION_LIFETIME = 3600

# GA4's metric types, and the factor that turns time values into seconds.
_METRIC_TYPES: dict[str, tuple[MetricType, float]] = {
    "TYPE_INTEGER": ("integer", 1.0),
    "TYPE_FLOAT": ("float", 1.0),
    "TYPE_CURRENCY": ("currency", 1.0),
    "TYPE_SECONDS": ("seconds", 1.0),
    "TYPE_MILLISECONDS": ("seconds", 0.001),
    "TYPE_MINUTES": ("seconds", 60.0),
    "TYPE_HOURS": ("seconds", 3600.0),
}

OnRefresh = Callable[[Credentials], Awaitable[None]]


class GA4Settings(ConnectionSettings):
    """Which GA4 property to report on."""

    property_id: str = Field(
        pattern=r"^[0-9]{1,20}$",
        title="GA4 property ID",
        description="The numeric ID in Admin → Property settings (not the G- measurement ID)",
    )


# --- Google's shapes ------------------------------------------------------------------------


class _ServiceAccountKey(BaseModel):
    client_email: str
    private_key: SecretStr
    private_key_id: str | None = None


class _Token(BaseModel):
    access_token: str
    expires_in: int
    refresh_token: str | None = None
    scope: str | None = None


class _Header(BaseModel):
    name: str


class _MetricHeader(BaseModel):
    name: str
    type: str = "METRIC_TYPE_UNSPECIFIED"


class _Value(BaseModel):
    value: str = ""


class _Row(BaseModel):
    dimensionValues: list[_Value] = []
    metricValues: list[_Value] = []


class _Metadata(BaseModel):
    currencyCode: str | None = None
    timeZone: str | None = None


class _RunReportResponse(BaseModel):
    dimensionHeaders: list[_Header] = []
    metricHeaders: list[_MetricHeader] = []
    rows: list[_Row] = []
    totals: list[_Row] = []
    # Google leaves out fields that hold their default, so an empty report has no rowCount.
    rowCount: int = 0
    metadata: _Metadata | None = None


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], data: Any, path: str) -> M:
    return parse_as(model, data, vendor=VENDOR, path=path)


# --- The connector --------------------------------------------------------------------------


class GA4Connector:
    """The analytics port over one GA4 property."""

    vendor = VENDOR

    def __init__(
        self,
        client: httpx.AsyncClient,
        credentials: ServiceAccountCredentials | OAuth2Credentials,
        *,
        property_id: str,
        oauth_client: OAuthClient | None = None,
        on_refresh: OnRefresh | None = None,
        vendor_url: Callable[[str], str] = lambda url: url,
        max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._client = client
        self._auth = credentials
        self._property = property_id
        self._oauth_client = oauth_client
        self._on_refresh = on_refresh
        self._vendor_url = vendor_url
        self._max_bytes = max_bytes
        # A service account's access token: derived from the key, so never stored.
        self._minted: tuple[str, float] | None = None

    @property
    def credentials(self) -> ServiceAccountCredentials | OAuth2Credentials:
        """The credentials in use now: after an OAuth refresh, the new tokens to store."""
        return self._auth

    # -- tokens

    async def _access_token(self) -> str:
        auth = self._auth
        if isinstance(auth, ServiceAccountCredentials):
            if self._minted is None or self._minted[1] - REFRESH_MARGIN <= time.time():
                await self._mint()
            assert self._minted is not None
            return self._minted[0]
        if (
            auth.expires_at is not None
            and auth.expires_at.timestamp() - REFRESH_MARGIN <= time.time()
        ):
            await self.refresh()
        return self._auth_token()

    def _auth_token(self) -> str:
        assert isinstance(self._auth, OAuth2Credentials)
        return self._auth.access_token.get_secret_value()

    def _key(self) -> _ServiceAccountKey:
        assert isinstance(self._auth, ServiceAccountCredentials)
        try:
            return _ServiceAccountKey.model_validate_json(
                self._auth.service_account_json.get_secret_value()
            )
        except ValidationError:
            raise AuthFailed("the service account key file is incomplete", vendor=VENDOR) from None

    def _assertion(self) -> str:
        key = self._key()
        now = int(time.time())
        claims = {
            "iss": key.client_email,
            "scope": SCOPE,
            # The audience is Google's token endpoint, whatever host the request goes to.
            "aud": TOKEN_URI,
            "iat": now,
            "exp": now + _ASSERTION_LIFETIME,
        }
        headers = {"kid": key.private_key_id} if key.private_key_id else None
        try:
            return jwt.encode(
                claims, key.private_key.get_secret_value(), algorithm="RS256", headers=headers
            )
        except (ValueError, TypeError, jwt.PyJWTError):
            # Never the key's text in the message: it is the secret.
            raise AuthFailed(
                "the service account's private key cannot be read", vendor=VENDOR
            ) from None

    async def _mint(self) -> None:
        token = await self._token_request(
            {"grant_type": JWT_BEARER, "assertion": self._assertion()}
        )
        self._minted = (token.access_token, time.time() + token.expires_in)

    async def refresh(self) -> OAuth2Credentials:
        """New OAuth tokens from the refresh token; ``on_refresh`` receives them."""
        auth = self._auth
        if not isinstance(auth, OAuth2Credentials) or auth.refresh_token is None:
            raise AuthFailed("these credentials cannot be refreshed", vendor=VENDOR)
        if self._oauth_client is None:
            raise AuthFailed("no OAuth client is configured for Google", vendor=VENDOR)
        token = await self._token_request(
            {
                "grant_type": "refresh_token",
                "client_id": self._oauth_client.client_id,
                "client_secret": self._oauth_client.client_secret.get_secret_value(),
                "refresh_token": auth.refresh_token.get_secret_value(),
            }
        )
        update: dict[str, Any] = {
            "access_token": SecretStr(token.access_token),
            "expires_at": datetime.now(UTC) + timedelta(seconds=token.expires_in),
        }
        if token.refresh_token:  # Google may rotate it
            update["refresh_token"] = SecretStr(token.refresh_token)
        self._auth = auth.model_copy(update=update)
        if self._on_refresh is not None:
            await self._on_refresh(self._auth)
        return self._auth

    async def _token_request(self, form: Mapping[str, str]) -> _Token:
        request = self._client.build_request("POST", self._vendor_url(TOKEN_URI), data=dict(form))
        response = await self._send(request)
        if response.status_code in (400, 401):
            try:
                body = response.json()
            except ValueError:
                body = None
            error = body.get("error") if isinstance(body, dict) else None
            described = body.get("error_description") if isinstance(body, dict) else None
            raise AuthFailed(
                f"Google refused the token request: {error or 'error'}"
                + (f" ({described})" if described else ""),
                vendor=VENDOR,
                status=response.status_code,
            )
        self._raise_for(response)
        return _validate(_Token, json_body(response, vendor=VENDOR), "$")

    async def _send(self, request: httpx.Request) -> httpx.Response:
        return await send(self._client, request, vendor=VENDOR, max_bytes=self._max_bytes)

    def _raise_for(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        reason, code = None, None
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict):
            reason = str(error.get("message") or "") or None
            code = str(error.get("status") or "") or None
        typed = error_for_status(response, vendor=VENDOR, reason=reason, code=code)
        assert typed is not None
        raise typed

    async def _run(self, body: Mapping[str, Any]) -> _RunReportResponse:
        url = self._vendor_url(f"{API_BASE}/v1beta/properties/{self._property}:runReport")
        for attempt in range(2):
            request = self._client.build_request(
                "POST",
                url,
                json=dict(body),
                headers={"Authorization": f"Bearer {await self._access_token()}"},
            )
            response = await self._send(request)
            if response.status_code == 401 and attempt == 0:
                # Revoked or expired early: one new token, then the answer stands.
                if isinstance(self._auth, ServiceAccountCredentials):
                    await self._mint()
                else:
                    await self.refresh()
                continue
            self._raise_for(response)
            return _validate(_RunReportResponse, json_body(response, vendor=VENDOR), "$")
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the port

    async def verify(self) -> AccountInfo:
        """A one-row report over the last week: proves the credentials and the property grant."""
        today = datetime.now(UTC).date()
        report = await self._run(
            {
                "dateRanges": [
                    {"startDate": (today - timedelta(days=7)).isoformat(), "endDate": "today"}
                ],
                "metrics": [{"name": "activeUsers"}],
                "limit": "1",
            }
        )
        detail: dict[str, str] = {"auth": "service_account"}
        if isinstance(self._auth, OAuth2Credentials):
            detail["auth"] = "oauth"
        else:
            detail["client_email"] = self._key().client_email
        if report.metadata is not None:
            if report.metadata.currencyCode:
                detail["currency"] = report.metadata.currencyCode
            if report.metadata.timeZone:
                detail["time_zone"] = report.metadata.timeZone
        return AccountInfo(
            account_id=self._property, name=f"GA4 property {self._property}", detail=detail
        )

    async def revoke(self) -> bool:
        """Revokes an OAuth grant at Google; a service account's key is deleted in Google
        Cloud by its owner, so there is nothing to revoke from here."""
        auth = self._auth
        if not isinstance(auth, OAuth2Credentials):
            return False
        token = auth.refresh_token or auth.access_token
        request = self._client.build_request(
            "POST", self._vendor_url(REVOKE_URI), data={"token": token.get_secret_value()}
        )
        response = await self._send(request)
        # 400 invalid_token: already revoked or expired, which is the outcome wanted.
        if response.status_code != 400:
            self._raise_for(response)
        return True

    async def run_report(self, request: ReportRequest) -> Report:
        digest = _digest(request)
        offset = 0
        if request.cursor is not None:
            state = decode_cursor(request.cursor, vendor=VENDOR)
            if state.get("q") != digest or not isinstance(state.get("offset"), int):
                raise InvalidCursor("the cursor belongs to another report", vendor=VENDOR)
            offset = state["offset"]
        body = {
            "dateRanges": [
                {
                    "startDate": request.date_range.start.isoformat(),
                    "endDate": request.date_range.end.isoformat(),
                }
            ],
            "dimensions": [{"name": name} for name in request.dimensions],
            "metrics": [{"name": name} for name in request.metrics],
            # int64 fields travel as strings in Google's JSON mapping.
            "limit": str(request.limit),
            "offset": str(offset),
            "metricAggregations": ["TOTAL"],
        }
        answer = await self._run(body)
        report = _report(answer, request)
        following = offset + len(answer.rows)
        if answer.rows and following < answer.rowCount:
            report.next_cursor = encode_cursor({"q": digest, "offset": following})
        return report


def _digest(request: ReportRequest) -> str:
    query = request.model_dump(mode="json", exclude={"cursor", "limit"})
    canonical = json.dumps(query, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def _report(answer: _RunReportResponse, request: ReportRequest) -> Report:
    dimensions = [h.name for h in answer.dimensionHeaders]
    if dimensions[: len(request.dimensions)] != request.dimensions:
        raise SchemaMismatch(
            "GA4 answered with other dimensions than asked for",
            vendor=VENDOR,
            field="$.dimensionHeaders",
        )
    headers = []
    factors = []
    for header in answer.metricHeaders:
        kind, factor = _METRIC_TYPES.get(header.type, ("other", 1.0))
        headers.append(MetricHeader(name=header.name, type=kind))
        factors.append(factor)
    if [h.name for h in headers] != request.metrics:
        raise SchemaMismatch(
            "GA4 answered with other metrics than asked for", vendor=VENDOR, field="$.metricHeaders"
        )
    rows = [
        _row(row, f"$.rows[{index}]", len(dimensions), factors)
        for index, row in enumerate(answer.rows)
    ]
    totals = None
    if answer.totals:
        totals = _row(answer.totals[0], "$.totals[0]", len(dimensions), factors).metrics
    return Report(
        dimension_headers=dimensions,
        metric_headers=headers,
        rows=rows,
        row_count=answer.rowCount,
        totals=totals,
    )


def _row(row: _Row, where: str, dimensions: int, factors: list[float]) -> ReportRow:
    if len(row.dimensionValues) != dimensions:
        raise SchemaMismatch(
            f"GA4 sent {len(row.dimensionValues)} dimension values for {dimensions} dimensions",
            vendor=VENDOR,
            field=f"{where}.dimensionValues",
        )
    if len(row.metricValues) != len(factors):
        raise SchemaMismatch(
            f"GA4 sent {len(row.metricValues)} metric values for {len(factors)} metrics",
            vendor=VENDOR,
            field=f"{where}.metricValues",
        )
    metrics = []
    for index, (value, factor) in enumerate(zip(row.metricValues, factors, strict=True)):
        try:
            metrics.append(float(value.value) * factor)
        except ValueError:
            raise SchemaMismatch(
                f"GA4 sent a metric value that is not a number: {value.value[:40]!r}",
                vendor=VENDOR,
                field=f"{where}.metricValues[{index}].value",
            ) from None
    return ReportRow(dimensions=[v.value for v in row.dimensionValues], metrics=metrics)


def _open(
    settings: GA4Settings,
    credentials: ServiceAccountCredentials | OAuth2Credentials,
    http: httpx.AsyncClient,
    context: ConnectorContext,
) -> GA4Connector:
    return GA4Connector(
        http,
        credentials,
        property_id=settings.property_id,
        oauth_client=context.oauth_client,
        on_refresh=context.on_credentials_refreshed,
        vendor_url=context.vendor_url,
        max_bytes=context.max_response_bytes,
    )


SPEC = ConnectorSpec(
    id="ga4",
    kind="analytics",
    display_name="Google Analytics 4",
    settings_model=GA4Settings,
    auth={
        "service_account": ServiceAccountCredentials,
        "oauth2_authorization_code": OAuth2Credentials,
    },
    factory=_open,
    # A standard property allows 10 concurrent requests and 40,000 tokens per hour.
    rate_limit=RateLimit(requests=60, per_seconds=60, concurrency=4),
    oauth=OAuthEndpoints(
        authorize_url=AUTHORIZE_URL,
        token_url=TOKEN_URI,
        revoke_url=REVOKE_URI,
        scopes=(SCOPE,),
        # A refresh token is issued only for offline access, and again only on a new consent.
        authorize_params={"access_type": "offline", "prompt": "consent"},
    ),
    description="Reports from a Google Analytics 4 property (Data API runReport).",
    docs_url="https://developers.google.com/analytics/devguides/reporting/data/v1",
)

__all__ = ["SPEC", "GA4Connector", "GA4Settings"]
