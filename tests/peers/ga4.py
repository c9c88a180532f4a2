"""A GA4 peer: Google's OAuth token endpoint and the Analytics Data API's ``runReport``.

What it follows, and where Google documents it:

- **Service accounts**: ``POST /token`` (Google's ``token_uri``) with
  ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` and an ``assertion``: a JWT signed
  RS256 with the service account's private key, ``kid`` its ``private_key_id``, claims ``iss``
  (the account's e-mail), ``scope``, ``aud`` (Google's token URI, whichever host serves it
  here), ``iat`` and ``exp`` at most an hour
  later. The peer verifies the signature with the public key the test registered, then issues
  ``{access_token, expires_in, token_type}``; a bad signature or claim is a 400
  ``invalid_grant`` with an ``error_description``.
  https://developers.google.com/identity/protocols/oauth2/service-account#httprest
- **OAuth (a user's consent)**: the same endpoint with ``grant_type=refresh_token`` and the
  client's id and secret; a revoked refresh token is a 400 ``invalid_grant`` ("Token has been
  expired or revoked."); ``POST /revoke`` (``token``) ends the grant and its access tokens.
  https://developers.google.com/identity/protocols/oauth2/web-server#offline,
  .../oauth2/web-server#tokenrevoke
- **runReport**: ``POST /v1beta/properties/{id}:runReport`` with ``dateRanges`` (``YYYY-MM-DD``,
  ``today``, ``yesterday``, ``NdaysAgo``), ``dimensions``, ``metrics``, ``limit`` and ``offset``
  (int64, sent as strings or numbers; ``limit`` at most 250,000). The answer has
  ``dimensionHeaders``, ``metricHeaders`` (with ``type``), ``rows`` of ``dimensionValues`` and
  ``metricValues`` (values are strings; no ``rows`` key when the page is empty), ``rowCount``
  (all rows, not the page's), ``metadata`` and ``kind``; with more than one date range a
  ``dateRange`` dimension is added. Unknown dimensions or metrics are a 400
  ``INVALID_ARGUMENT``. ``metricAggregations: ["TOTAL"]`` adds ``totals``;
  ``returnPropertyQuota`` adds ``propertyQuota``.
  https://developers.google.com/analytics/devguides/reporting/data/v1/rest/v1beta/properties/runReport,
  .../data/v1/basics#pagination, .../data/v1/api-schema
- **Errors and quotas**: errors are ``{"error": {code, message, status}}`` (``UNAUTHENTICATED``
  401, ``PERMISSION_DENIED`` 403 for a property the principal cannot read, ``INVALID_ARGUMENT``
  400, ``RESOURCE_EXHAUSTED`` 429 once the property's tokens per hour are spent).
  https://cloud.google.com/apis/design/errors,
  https://developers.google.com/analytics/devguides/reporting/data/v1/quotas

A test registers service accounts and property grants, queues :class:`Fault` answers, lowers
the quota or revokes tokens, and fixes a metric's daily values (``seed_daily``; other values are
made up from a hash of the row); it reads what the peer received in ``requests``.

Use it with ``pytest_plugins = ["tests.peers.ga4"]`` (PYTEST_DONT_REWRITE: test modules
import it before pytest loads it as a plugin).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import secrets
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.peers.asgi import Swappable, serve

SCOPE = "https://www.googleapis.com/auth/analytics.readonly"
# Google's token endpoint: the audience an assertion must name, whichever host serves it.
TOKEN_URI = "https://oauth2.googleapis.com/token"
OAUTH_CLIENT_ID = "1234567890-ga4.apps.googleusercontent.com"
OAUTH_CLIENT_SECRET = "GOCSPX-ga4-client-secret"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"

DIMENSIONS: dict[str, tuple[str, ...]] = {
    "country": ("Germany", "India", "United States"),
    "deviceCategory": ("desktop", "mobile", "tablet"),
    "sessionSource": ("(direct)", "google", "newsletter"),
    "pagePath": ("/", "/blog", "/pricing"),
}
METRICS = {
    "activeUsers": "TYPE_INTEGER",
    "sessions": "TYPE_INTEGER",
    "screenPageViews": "TYPE_INTEGER",
    "eventCount": "TYPE_INTEGER",
    "bounceRate": "TYPE_FLOAT",
    "averageSessionDuration": "TYPE_SECONDS",
    "totalRevenue": "TYPE_CURRENCY",
}


@dataclass
class Fault:
    """One answer the peer gives instead of serving the request."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def error(cls, code: int, status: str, message: str, **headers: str) -> Fault:
        return cls(code, _error(code, status, message), dict(headers))


@dataclass
class ServiceAccount:
    """A service account's key file (as Google's console downloads it) and its public key."""

    info: dict[str, str]
    public_pem: bytes

    @property
    def email(self) -> str:
        return self.info["client_email"]


@dataclass
class GA4Peer:
    """The peer's state: its URL, keys, grants, tokens, quota, faults and requests."""

    url: str = ""
    # client_email -> {private_key_id: public key PEM}
    public_keys: dict[str, dict[str, bytes]] = field(default_factory=dict)
    # property id -> principals (service account e-mails, "user:..." for OAuth) that may read it
    grants: dict[str, set[str]] = field(default_factory=dict)
    # access token -> (principal, expiry epoch s)
    access_tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    # refresh token -> principal
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    tokens_per_hour: int = 40_000
    tokens_used: int = 0
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    # (metric, a row's dimension values) -> the value a test fixed
    values: dict[tuple[str, tuple[str, ...]], str] = field(default_factory=dict)
    _keys: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def fail(self, path_prefix: str, *faults: Fault) -> None:
        """Answer the next requests whose path starts with ``path_prefix`` with ``faults``."""
        self.faults.setdefault(path_prefix, []).extend(faults)

    def service_account(self, name: str = "reports", *, register: bool = True) -> ServiceAccount:
        """A new service account with a fresh RSA key; ``register`` tells the peer its public
        key (an unregistered one is a key Google never issued)."""
        number = next(self._keys)
        key = _rsa_key(number)
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key_id = f"{number:040x}"
        email = f"{name}@bizosaas-tests.iam.gserviceaccount.com"
        info = {
            "type": "service_account",
            "project_id": "bizosaas-tests",
            "private_key_id": key_id,
            "private_key": private_pem,
            "client_email": email,
            "client_id": str(100_000_000_000_000_000_000 + number),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": TOKEN_URI,
        }
        if register:
            self.public_keys.setdefault(email, {})[key_id] = public_pem
        return ServiceAccount(info, public_pem)

    def grant(self, property_id: str, principal: str) -> None:
        self.grants.setdefault(property_id, set()).add(principal)

    def user_consent(self, user: str = "user:owner@example.com") -> str:
        """A refresh token a user's consent would leave, for ``user``."""
        token = f"1//0g{secrets.token_urlsafe(24)}"
        self.refresh_tokens[token] = user
        return token

    def expire_all(self) -> None:
        for token, (principal, _) in self.access_tokens.items():
            self.access_tokens[token] = (principal, time.time() - 1)

    def seed_daily(self, metric: str, days: dict[date, int]) -> None:
        """Fix ``metric``'s value on these days, in reports by ``date`` alone."""
        for day, value in days.items():
            self.values[(metric, (day.strftime("%Y%m%d"),))] = str(value)

    def value(self, metric: str, key: tuple[str, ...]) -> str:
        """The row's value: the one a test fixed, or one made up from the row."""
        return self.values.get((metric, key)) or _metric_value(metric, key)

    def seen(self, method: str, path_prefix: str) -> list[tuple[str, str, dict[str, str], bytes]]:
        return [r for r in self.requests if r[0] == method and r[1].startswith(path_prefix)]

    def _issue(self, principal: str) -> dict[str, Any]:
        token = f"ya29.{secrets.token_urlsafe(32)}"
        self.access_tokens[token] = (principal, time.time() + 3599)
        return {"access_token": token, "expires_in": 3599, "token_type": "Bearer", "scope": SCOPE}

    def _next_fault(self, path: str) -> Fault | None:
        for prefix, queued in self.faults.items():
            if path.startswith(prefix) and queued:
                return queued.pop(0)
        return None


@functools.cache
def _rsa_key(number: int) -> rsa.RSAPrivateKey:
    """The ``number``-th test key: made once per test run (a 2048-bit key takes a while)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


_DAYS_AGO = re.compile(r"^(\d+)daysAgo$")


def _day(value: Any, today: date) -> date | None:
    if not isinstance(value, str):
        return None
    if value == "today":
        return today
    if value == "yesterday":
        return today - timedelta(days=1)
    if match := _DAYS_AGO.match(value):
        return today - timedelta(days=int(match.group(1)))
    try:
        return date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        return None


def _metric_value(metric: str, key: tuple[str, ...]) -> str:
    seed = zlib.crc32("|".join((metric, *key)).encode())
    kind = METRICS[metric]
    if kind == "TYPE_INTEGER":
        return str(seed % 1000)
    if kind == "TYPE_FLOAT":
        return f"{(seed % 1000) / 1000:.4f}"
    return f"{(seed % 100_000) / 100:.2f}"


def _total(metric: str, values: list[str]) -> str:
    total = sum(float(v) for v in values)
    return str(int(total)) if METRICS[metric] == "TYPE_INTEGER" else f"{total:.2f}"


def build_app(peer: GA4Peer) -> Starlette:
    """The peer's ASGI app over ``peer``'s state."""

    async def record(request: Request) -> Response | None:
        peer.requests.append(
            (request.method, request.url.path, dict(request.headers), await request.body())
        )
        fault = peer._next_fault(request.url.path)
        if fault is None:
            return None
        if isinstance(fault.body, (dict, list)):
            return JSONResponse(fault.body, fault.status, headers=fault.headers)
        return Response(fault.body or b"", fault.status, headers=fault.headers)

    def oauth_error(error: str, description: str, status: int = 400) -> Response:
        return JSONResponse({"error": error, "error_description": description}, status)

    async def token(request: Request) -> Response:
        if (fault := await record(request)) is not None:
            return fault
        form = {k: str(v) for k, v in (await request.form()).items()}
        grant = form.get("grant_type")
        if grant == JWT_BEARER:
            return exchange_assertion(form.get("assertion", ""))
        if grant == "refresh_token":
            if (
                form.get("client_id") != OAUTH_CLIENT_ID
                or form.get("client_secret") != OAUTH_CLIENT_SECRET
            ):
                return oauth_error("invalid_client", "The OAuth client was not found.", 401)
            principal = peer.refresh_tokens.get(form.get("refresh_token", ""))
            if principal is None:
                return oauth_error("invalid_grant", "Token has been expired or revoked.")
            return JSONResponse(peer._issue(principal))
        return oauth_error("unsupported_grant_type", f"Invalid grant_type: {grant}")

    def exchange_assertion(assertion: str) -> Response:
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return oauth_error("invalid_grant", "Invalid JWT: not a JWT.")
        keys = peer.public_keys.get(str(claims.get("iss")), {})
        public_key = keys.get(str(header.get("kid")))
        if header.get("alg") != "RS256" or public_key is None:
            return oauth_error("invalid_grant", "Invalid grant: account not found")
        try:
            claims = jwt.decode(
                assertion,
                public_key,
                algorithms=["RS256"],
                audience=TOKEN_URI,
                options={"require": ["iss", "aud", "iat", "exp"]},
                leeway=60,
            )
        except jwt.InvalidSignatureError:
            return oauth_error("invalid_grant", "Invalid JWT Signature.")
        except jwt.PyJWTError as exc:
            return oauth_error("invalid_grant", f"Invalid JWT: {exc}")
        if int(claims["exp"]) - int(claims["iat"]) > 3600:
            return oauth_error(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.",
            )
        if SCOPE not in str(claims.get("scope", "")).split():
            return oauth_error(
                "invalid_scope", "Invalid OAuth scope or ID token audience provided."
            )
        return JSONResponse(peer._issue(str(claims["iss"])))

    def api_error(code: int, status: str, message: str) -> Response:
        return JSONResponse(_error(code, status, message), code)

    async def revoke(request: Request) -> Response:
        if (fault := await record(request)) is not None:
            return fault
        token = str((await request.form()).get("token") or request.query_params.get("token"))
        principal = peer.refresh_tokens.get(token) or peer.access_tokens.get(token, ("", 0.0))[0]
        if not principal:
            return oauth_error("invalid_token", "Token expired or revoked")
        # Revoking a grant ends its refresh token and every access token issued from it.
        for refresh, owner in list(peer.refresh_tokens.items()):
            if owner == principal:
                del peer.refresh_tokens[refresh]
        for access, (owner, _) in list(peer.access_tokens.items()):
            if owner == principal:
                del peer.access_tokens[access]
        return JSONResponse({})

    async def run_report(request: Request) -> Response:
        if (fault := await record(request)) is not None:
            return fault
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        principal, expiry = peer.access_tokens.get(token, ("", 0.0))
        if scheme != "Bearer" or expiry < time.time():
            return api_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
            )
        property_id = str(request.path_params["property_id"])
        if principal not in peer.grants.get(property_id, set()):
            return api_error(
                403,
                "PERMISSION_DENIED",
                "User does not have sufficient permissions for this property. To learn more "
                "about Property ID, see "
                "https://developers.google.com/analytics/devguides/reporting/data/v1/property-id.",
            )
        if peer.tokens_used >= peer.tokens_per_hour:
            return api_error(
                429,
                "RESOURCE_EXHAUSTED",
                "Exhausted property tokens per hour for this property. Request more quota at "
                "https://developers.google.com/analytics/devguides/reporting/data/v1/quotas",
            )
        try:
            body = json.loads(await request.body())
        except ValueError:
            return api_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        return report(body)

    def report(body: dict[str, Any]) -> Response:
        today = date.today()
        ranges: list[tuple[date, date]] = []
        for index, item in enumerate(body.get("dateRanges") or []):
            start, end = _day(item.get("startDate"), today), _day(item.get("endDate"), today)
            if start is None or end is None:
                return api_error(400, "INVALID_ARGUMENT", f"Invalid dateRanges[{index}].")
            if end < start:
                return api_error(
                    400,
                    "INVALID_ARGUMENT",
                    f"dateRanges[{index}]: endDate must not be before startDate.",
                )
            ranges.append((start, end))
        if not ranges or len(ranges) > 4:
            return api_error(400, "INVALID_ARGUMENT", "Between 1 and 4 dateRanges are required.")
        dimensions = [str(d.get("name")) for d in body.get("dimensions") or []]
        metrics = [str(m.get("name")) for m in body.get("metrics") or []]
        for name in dimensions:
            if name != "date" and name not in DIMENSIONS:
                return api_error(
                    400,
                    "INVALID_ARGUMENT",
                    f"Field {name} is not a valid dimension. For a list of valid dimensions and "
                    "metrics, see https://developers.google.com/analytics/devguides/reporting/"
                    "data/v1/api-schema",
                )
        for name in metrics:
            if name not in METRICS:
                return api_error(
                    400,
                    "INVALID_ARGUMENT",
                    f"Field {name} is not a valid metric. For a list of valid dimensions and "
                    "metrics, see https://developers.google.com/analytics/devguides/reporting/"
                    "data/v1/api-schema",
                )
        if not metrics and not dimensions:
            return api_error(
                400, "INVALID_ARGUMENT", "At least one dimension or metric is required."
            )
        if len(dimensions) > 9 or len(metrics) > 10:
            return api_error(400, "INVALID_ARGUMENT", "At most 9 dimensions and 10 metrics.")
        try:
            limit = int(body.get("limit") or 10_000)
            offset = int(body.get("offset") or 0)
        except (TypeError, ValueError):
            return api_error(400, "INVALID_ARGUMENT", "limit and offset must be integers.")
        if limit < 0 or offset < 0:
            return api_error(400, "INVALID_ARGUMENT", "limit and offset must not be negative.")
        limit = min(limit, 250_000)
        peer.tokens_used += 1

        columns: list[tuple[str, ...]] = []
        for name in dimensions:
            if name == "date":
                days = sorted(
                    {
                        (start + timedelta(days=n)).strftime("%Y%m%d")
                        for start, end in ranges
                        for n in range((end - start).days + 1)
                    }
                )
                columns.append(tuple(days))
            else:
                columns.append(DIMENSIONS[name])
        headers = list(dimensions)
        if len(ranges) > 1:
            headers.append("dateRange")
            columns.append(tuple(f"date_range_{n}" for n in range(len(ranges))))
        combos = list(itertools.product(*columns))
        page = combos[offset : offset + limit]
        answer: dict[str, Any] = {
            "dimensionHeaders": [{"name": name} for name in headers],
            "metricHeaders": [{"name": name, "type": METRICS[name]} for name in metrics],
        }
        if page:
            answer["rows"] = [
                {
                    "dimensionValues": [{"value": value} for value in combo],
                    "metricValues": [{"value": peer.value(m, combo)} for m in metrics],
                }
                for combo in page
            ]
        if "TOTAL" in (body.get("metricAggregations") or []) and combos:
            answer["totals"] = [
                {
                    "dimensionValues": [{"value": "RESERVED_TOTAL"} for _ in headers],
                    "metricValues": [
                        {"value": _total(m, [peer.value(m, c) for c in combos])} for m in metrics
                    ],
                }
            ]
        if combos:
            # Google's JSON leaves out fields holding their default: no rowCount for none.
            answer["rowCount"] = len(combos)
        answer["metadata"] = {"currencyCode": "EUR", "timeZone": "Europe/Berlin"}
        if body.get("returnPropertyQuota"):
            answer["propertyQuota"] = {
                "tokensPerHour": {
                    "consumed": 1,
                    "remaining": max(0, peer.tokens_per_hour - peer.tokens_used),
                }
            }
        answer["kind"] = "analyticsData#runReport"
        return JSONResponse(answer)

    return Starlette(
        routes=[
            Route("/token", token, methods=["POST"]),
            Route("/revoke", revoke, methods=["POST"]),
            Route("/v1beta/properties/{property_id}:runReport", run_report, methods=["POST"]),
        ]
    )


@pytest.fixture(scope="session")
def _ga4_server() -> Iterator[tuple[Swappable, str]]:
    mount = Swappable()
    with serve(mount) as url:
        yield mount, url


@pytest.fixture
def ga4_peer(_ga4_server: tuple[Swappable, str]) -> GA4Peer:
    """Google's token endpoint and the Data API, with no accounts or grants, for one test."""
    mount, url = _ga4_server
    peer = GA4Peer(url=url)
    mount.app = build_app(peer)
    return peer
