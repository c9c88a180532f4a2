"""The GA4 connector against the GA4 peer (Google's token endpoint and the Data API), over HTTP.

The peer verifies every service-account assertion with the public key of an RSA key pair made
for the test, as Google verifies it with the key it issued.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
import respx
from pydantic import SecretStr

from connectors.analytics import DateRange, ReportRequest
from connectors.analytics.ga4 import API_BASE, SPEC, TOKEN_URI, GA4Connector, GA4Settings
from connectors.http import (
    AuthFailed,
    InvalidCursor,
    RateLimited,
    SchemaMismatch,
    VendorRejected,
    VendorUnavailable,
    as_application_error,
    connector_client,
)
from connectors.registry import (
    ConnectorContext,
    Credentials,
    OAuth2Credentials,
    OAuthClient,
    ServiceAccountCredentials,
)
from tests.peers.ga4 import (
    JWT_BEARER,
    OAUTH_CLIENT_ID,
    OAUTH_CLIENT_SECRET,
    SCOPE,
    Fault,
    GA4Peer,
    ServiceAccount,
)

pytest_plugins = ["tests.peers.ga4"]

PROPERTY = "123456789"
TEN_DAYS = DateRange(start=date(2026, 11, 1), end=date(2026, 11, 10))
REPORT_RUN = f"/v1beta/properties/{PROPERTY}:runReport"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with connector_client(allow_private=True) as client:
        yield client


def _open(
    peer: GA4Peer,
    http: httpx.AsyncClient,
    credentials: Credentials,
    refreshed: list[Credentials] | None = None,
) -> GA4Connector:
    async def remember(new: Credentials) -> None:
        assert refreshed is not None
        refreshed.append(new)

    context = ConnectorContext(
        allow_private_urls=True,
        oauth_client=OAuthClient(OAUTH_CLIENT_ID, SecretStr(OAUTH_CLIENT_SECRET)),
        on_credentials_refreshed=remember if refreshed is not None else None,
        vendor_origins={API_BASE: peer.url, "https://oauth2.googleapis.com": peer.url},
    )
    connector = SPEC.factory(GA4Settings(property_id=PROPERTY), credentials, http, context)
    assert isinstance(connector, GA4Connector)
    return connector


def _key_file(account: ServiceAccount) -> ServiceAccountCredentials:
    return ServiceAccountCredentials(service_account_json=SecretStr(json.dumps(account.info)))


@pytest.fixture
def account(ga4_peer: GA4Peer) -> ServiceAccount:
    account = ga4_peer.service_account()
    ga4_peer.grant(PROPERTY, account.email)
    return account


@pytest.fixture
def ga4(ga4_peer: GA4Peer, http: httpx.AsyncClient, account: ServiceAccount) -> GA4Connector:
    return _open(ga4_peer, http, _key_file(account))


def _assertions(peer: GA4Peer) -> list[str]:
    forms = [parse_qs(body.decode()) for _, _, _, body in peer.seen("POST", "/token")]
    return [form["assertion"][0] for form in forms if form["grant_type"] == [JWT_BEARER]]


async def test_reports_page_by_page_with_a_service_account(
    ga4_peer: GA4Peer, ga4: GA4Connector, account: ServiceAccount
) -> None:
    request = ReportRequest(
        date_range=TEN_DAYS, dimensions=["date", "country"], metrics=["activeUsers"], limit=12
    )
    pages = []
    while True:
        report = await ga4.run_report(request)
        pages.append(report)
        if report.next_cursor is None:
            break
        request = request.model_copy(update={"cursor": report.next_cursor})

    assert [len(p.rows) for p in pages] == [12, 12, 6]
    assert {p.row_count for p in pages} == {30}
    whole = await ga4.run_report(
        ReportRequest(date_range=TEN_DAYS, dimensions=["date", "country"], metrics=["activeUsers"])
    )
    assert [r for p in pages for r in p.rows] == whole.rows
    assert whole.rows[0].dimensions == ["20261101", "Germany"]
    assert whole.dimension_headers == ["date", "country"]
    assert [(h.name, h.type) for h in whole.metric_headers] == [("activeUsers", "integer")]
    assert whole.totals == [sum(r.metrics[0] for r in whole.rows)]
    # Offsets and limits travel as int64 strings, the date range as ISO dates.
    sent = [json.loads(body) for _, _, _, body in ga4_peer.seen("POST", REPORT_RUN)]
    assert [(b["offset"], b["limit"]) for b in sent[:3]] == [
        ("0", "12"),
        ("12", "12"),
        ("24", "12"),
    ]
    assert sent[0]["dateRanges"] == [{"startDate": "2026-11-01", "endDate": "2026-11-10"}]

    # One token for all four reports, minted from an assertion Google would accept.
    [assertion] = _assertions(ga4_peer)
    header = jwt.get_unverified_header(assertion)
    claims = jwt.decode(assertion, account.public_pem, algorithms=["RS256"], audience=TOKEN_URI)
    assert (header["alg"], header["kid"]) == ("RS256", account.info["private_key_id"])
    assert (claims["iss"], claims["scope"]) == (account.email, SCOPE)
    assert claims["exp"] - claims["iat"] == 3600


async def test_metric_types_are_named_and_time_is_in_seconds(
    ga4_peer: GA4Peer, ga4: GA4Connector
) -> None:
    report = await ga4.run_report(
        ReportRequest(
            date_range=TEN_DAYS,
            dimensions=["deviceCategory"],
            metrics=["averageSessionDuration", "totalRevenue", "bounceRate"],
        )
    )
    assert [(h.name, h.type) for h in report.metric_headers] == [
        ("averageSessionDuration", "seconds"),
        ("totalRevenue", "currency"),
        ("bounceRate", "float"),
    ]
    ga4_peer.fail(
        REPORT_RUN,
        Fault(
            200,
            {
                "dimensionHeaders": [],
                "metricHeaders": [{"name": "userEngagementDuration", "type": "TYPE_MILLISECONDS"}],
                "rows": [{"dimensionValues": [], "metricValues": [{"value": "1500"}]}],
                "rowCount": 1,
            },
        ),
    )
    engaged = await ga4.run_report(
        ReportRequest(date_range=TEN_DAYS, metrics=["userEngagementDuration"])
    )
    assert engaged.rows[0].metrics == [1.5]


async def test_an_empty_report_has_no_rows_and_no_cursor(
    ga4_peer: GA4Peer, ga4: GA4Connector
) -> None:
    # Google leaves out `rows` and `rowCount` when nothing matched.
    ga4_peer.fail(
        REPORT_RUN,
        Fault(
            200,
            {
                "dimensionHeaders": [{"name": "country"}],
                "metricHeaders": [{"name": "sessions", "type": "TYPE_INTEGER"}],
                "metadata": {"currencyCode": "EUR", "timeZone": "Europe/Berlin"},
                "kind": "analyticsData#runReport",
            },
        ),
    )
    report = await ga4.run_report(
        ReportRequest(date_range=TEN_DAYS, dimensions=["country"], metrics=["sessions"])
    )
    assert (report.rows, report.row_count, report.next_cursor) == ([], 0, None)


async def test_verify_names_the_property(ga4: GA4Connector, account: ServiceAccount) -> None:
    info = await ga4.verify()
    assert info.account_id == PROPERTY
    assert info.detail == {
        "auth": "service_account",
        "client_email": account.email,
        "currency": "EUR",
        "time_zone": "Europe/Berlin",
    }


async def test_a_cursor_cannot_continue_another_report(ga4: GA4Connector) -> None:
    first = await ga4.run_report(
        ReportRequest(date_range=TEN_DAYS, dimensions=["date"], metrics=["sessions"], limit=3)
    )
    assert first.next_cursor is not None
    with pytest.raises(InvalidCursor):
        await ga4.run_report(
            ReportRequest(
                date_range=TEN_DAYS,
                dimensions=["country"],
                metrics=["sessions"],
                cursor=first.next_cursor,
            )
        )


async def test_a_key_google_did_not_issue_is_an_auth_failure(
    ga4_peer: GA4Peer, http: httpx.AsyncClient, account: ServiceAccount
) -> None:
    stranger = ga4_peer.service_account("stranger", register=False)
    # The right account and key id, signed with another key.
    forged = {**account.info, "private_key": stranger.info["private_key"]}
    ga4 = _open(
        ga4_peer,
        http,
        ServiceAccountCredentials(service_account_json=SecretStr(json.dumps(forged))),
    )

    with pytest.raises(AuthFailed, match="Invalid JWT Signature") as failed:
        await ga4.run_report(ReportRequest(date_range=TEN_DAYS, metrics=["sessions"]))

    assert as_application_error(failed.value).non_retryable
    assert ga4_peer.seen("POST", REPORT_RUN) == []


async def test_an_unreadable_private_key_is_an_auth_failure(
    ga4_peer: GA4Peer, http: httpx.AsyncClient, account: ServiceAccount
) -> None:
    broken = {**account.info, "private_key": "-----BEGIN PRIVATE KEY-----\nnot a key\n"}
    ga4 = _open(
        ga4_peer,
        http,
        ServiceAccountCredentials(service_account_json=SecretStr(json.dumps(broken))),
    )
    with pytest.raises(AuthFailed, match="cannot be read") as failed:
        await ga4.verify()
    assert "not a key" not in str(failed.value)


async def test_a_property_not_shared_with_the_account_is_an_auth_failure(
    ga4_peer: GA4Peer, http: httpx.AsyncClient
) -> None:
    outsider = ga4_peer.service_account("outsider")
    ga4 = _open(ga4_peer, http, _key_file(outsider))
    with pytest.raises(AuthFailed, match="sufficient permissions") as failed:
        await ga4.verify()
    assert failed.value.status == 403


async def test_an_unknown_dimension_is_refused_with_googles_reason(ga4: GA4Connector) -> None:
    with pytest.raises(VendorRejected) as refused:
        await ga4.run_report(
            ReportRequest(date_range=TEN_DAYS, dimensions=["shoeSize"], metrics=["sessions"])
        )
    assert (refused.value.status, refused.value.code) == (400, "INVALID_ARGUMENT")
    assert "shoeSize is not a valid dimension" in refused.value.reason


async def test_an_exhausted_quota_is_rate_limited(ga4_peer: GA4Peer, ga4: GA4Connector) -> None:
    ga4_peer.tokens_per_hour = 1
    request = ReportRequest(date_range=TEN_DAYS, metrics=["sessions"])
    await ga4.run_report(request)

    with pytest.raises(RateLimited, match="Exhausted property tokens per hour") as limited:
        await ga4.run_report(request)
    assert limited.value.retry_after is None
    assert not as_application_error(limited.value).non_retryable


async def test_429_honours_retry_after(ga4_peer: GA4Peer, ga4: GA4Connector) -> None:
    ga4_peer.fail(
        REPORT_RUN,
        Fault.error(
            429,
            "RESOURCE_EXHAUSTED",
            "Exhausted concurrent requests quota.",
            **{"Retry-After": "4"},
        ),
    )
    with pytest.raises(RateLimited) as limited:
        await ga4.run_report(ReportRequest(date_range=TEN_DAYS, metrics=["sessions"]))
    assert limited.value.retry_after == 4
    assert as_application_error(limited.value).next_retry_delay == timedelta(seconds=4)


async def test_5xx_is_retryable(ga4_peer: GA4Peer, ga4: GA4Connector) -> None:
    ga4_peer.fail(
        REPORT_RUN, Fault.error(503, "UNAVAILABLE", "The service is currently unavailable.")
    )
    request = ReportRequest(date_range=TEN_DAYS, metrics=["sessions"])
    with pytest.raises(VendorUnavailable) as unavailable:
        await ga4.run_report(request)
    assert not as_application_error(unavailable.value).non_retryable
    assert (await ga4.run_report(request)).row_count == 1


@pytest.mark.parametrize(
    ("answer", "field"),
    [
        (
            {
                "metricHeaders": [{"name": "sessions", "type": "TYPE_INTEGER"}],
                "rows": [{"dimensionValues": [], "metricValues": [{"value": "many"}]}],
                "rowCount": 1,
            },
            "$.rows[0].metricValues[0].value",
        ),
        (
            {
                "metricHeaders": [{"name": "sessions", "type": "TYPE_INTEGER"}],
                "rows": [{"dimensionValues": [], "metricValues": [{"value": "1"}]}],
                "rowCount": "one",
            },
            "$.rowCount",
        ),
        (
            {
                "metricHeaders": [{"name": "sessions", "type": "TYPE_INTEGER"}],
                "rows": [{"dimensionValues": [], "metricValues": []}],
                "rowCount": 1,
            },
            "$.rows[0].metricValues",
        ),
    ],
)
async def test_an_unexpected_answer_is_a_schema_mismatch(
    ga4_peer: GA4Peer, ga4: GA4Connector, answer: dict[str, object], field: str
) -> None:
    ga4_peer.fail(REPORT_RUN, Fault(200, answer))
    with pytest.raises(SchemaMismatch) as mismatch:
        await ga4.run_report(ReportRequest(date_range=TEN_DAYS, metrics=["sessions"]))
    assert mismatch.value.field == field


async def test_oauth_tokens_refresh_ahead_of_expiry(
    ga4_peer: GA4Peer, http: httpx.AsyncClient
) -> None:
    refresh = ga4_peer.user_consent()
    ga4_peer.grant(PROPERTY, "user:owner@example.com")
    refreshed: list[Credentials] = []
    credentials = OAuth2Credentials(
        access_token=SecretStr("ya29.stale"),
        refresh_token=SecretStr(refresh),
        expires_at=datetime.now(UTC) - timedelta(minutes=1),
    )
    ga4 = _open(ga4_peer, http, credentials, refreshed)

    info = await ga4.verify()

    assert info.detail["auth"] == "oauth"
    [new] = refreshed
    assert isinstance(new, OAuth2Credentials)
    assert new.refresh_token == credentials.refresh_token
    assert new.expires_at is not None
    assert new.expires_at > datetime.now(UTC) + timedelta(minutes=50)
    assert ga4.credentials == new
    [(_, _, headers, _)] = ga4_peer.seen("POST", REPORT_RUN)
    assert headers["authorization"] == f"Bearer {new.access_token.get_secret_value()}"


async def test_a_401_refreshes_once(ga4_peer: GA4Peer, http: httpx.AsyncClient) -> None:
    refresh = ga4_peer.user_consent()
    ga4_peer.grant(PROPERTY, "user:owner@example.com")
    refreshed: list[Credentials] = []
    credentials = OAuth2Credentials(
        access_token=SecretStr("ya29.revoked-early"),
        refresh_token=SecretStr(refresh),
        expires_at=datetime.now(UTC) + timedelta(minutes=30),
    )
    ga4 = _open(ga4_peer, http, credentials, refreshed)

    report = await ga4.run_report(ReportRequest(date_range=TEN_DAYS, metrics=["sessions"]))

    assert report.row_count == 1
    assert len(refreshed) == 1
    assert len(ga4_peer.seen("POST", REPORT_RUN)) == 2


async def test_a_revoked_grant_is_an_auth_failure(
    ga4_peer: GA4Peer, http: httpx.AsyncClient
) -> None:
    refresh = ga4_peer.user_consent()
    ga4_peer.grant(PROPERTY, "user:owner@example.com")
    credentials = OAuth2Credentials(
        access_token=SecretStr("ya29.old"), refresh_token=SecretStr(refresh), expires_at=None
    )
    ga4 = _open(ga4_peer, http, credentials)
    assert await ga4.revoke() is True
    assert ga4_peer.refresh_tokens == {}

    with pytest.raises(AuthFailed, match="Token has been expired or revoked"):
        await ga4.run_report(ReportRequest(date_range=TEN_DAYS, metrics=["sessions"]))


async def test_a_service_account_has_nothing_to_revoke(ga4: GA4Connector) -> None:
    assert await ga4.revoke() is False


def test_the_spec_offers_service_accounts_and_oauth() -> None:
    assert SPEC.auth_kinds == ("service_account", "oauth2_authorization_code")
    form = SPEC.form_schema()
    assert form["required"] == ["property_id", "service_account_json"]
    assert form["properties"]["service_account_json"]["writeOnly"] is True
    assert SPEC.oauth is not None
    assert SPEC.oauth.authorize_params["access_type"] == "offline"
    with pytest.raises(ValueError, match="property_id"):
        GA4Settings(property_id="G-ABC123")


async def test_production_requests_go_to_google_in_its_shapes() -> None:
    """No peer and no origin override: Google's token endpoint and the Data API itself."""
    account = GA4Peer().service_account()
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as vendor:
        token = vendor.post(TOKEN_URI).respond(
            200, json={"access_token": "ya29.sa", "expires_in": 3599, "token_type": "Bearer"}
        )
        report = vendor.post(f"{API_BASE}/v1beta/properties/{PROPERTY}:runReport").respond(
            200,
            json={
                "dimensionHeaders": [{"name": "date"}],
                "metricHeaders": [{"name": "sessions", "type": "TYPE_INTEGER"}],
                "rows": [
                    {"dimensionValues": [{"value": "20261101"}], "metricValues": [{"value": "7"}]}
                ],
                "rowCount": 1,
                "kind": "analyticsData#runReport",
            },
        )
        async with connector_client(allow_private=False) as http:
            connector = SPEC.factory(
                GA4Settings(property_id=PROPERTY), _key_file(account), http, ConnectorContext()
            )
            assert isinstance(connector, GA4Connector)
            result = await connector.run_report(
                ReportRequest(date_range=TEN_DAYS, dimensions=["date"], metrics=["sessions"])
            )

    assert result.rows[0].metrics == [7.0]
    form = parse_qs(token.calls.last.request.content.decode())
    assert form["grant_type"] == [JWT_BEARER]
    claims = jwt.decode(
        form["assertion"][0], account.public_pem, algorithms=["RS256"], audience=TOKEN_URI
    )
    assert claims["iss"] == account.email
    sent = report.calls.last.request
    assert sent.headers["authorization"] == "Bearer ya29.sa"
    assert json.loads(sent.content) == {
        "dateRanges": [{"startDate": "2026-11-01", "endDate": "2026-11-10"}],
        "dimensions": [{"name": "date"}],
        "metrics": [{"name": "sessions"}],
        "limit": "1000",
        "offset": "0",
        "metricAggregations": ["TOTAL"],
    }
