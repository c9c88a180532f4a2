"""The Zoho CRM connector against the Zoho peer (accounts server and API), over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
from pydantic import SecretStr

from connectors.crm import (
    ActivityDraft,
    ActivityQuery,
    CompanyDraft,
    Contact,
    ContactDraft,
    ContactUpdate,
    DealDraft,
    DealUpdate,
    RecordRef,
)
from connectors.crm.zoho import EXTERNAL_ID, SPEC, ZohoConnector, ZohoSettings
from connectors.http import (
    AuthFailed,
    InvalidCursor,
    RateLimited,
    SchemaMismatch,
    Unsupported,
    VendorNotFound,
    VendorRejected,
    VendorUnavailable,
    as_application_error,
    connector_client,
)
from connectors.ports import ListQuery, SyncQuery
from connectors.registry import ConnectorContext, Credentials, OAuth2Credentials, OAuthClient
from tests.peers.zoho import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, Fault, ZohoPeer

pytest_plugins = ["tests.peers.zoho"]

ACCOUNTS_EU = "https://accounts.zoho.eu"
API_EU = "https://www.zohoapis.eu"
T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with connector_client(allow_private=True) as client:
        yield client


async def _consent(peer: ZohoPeer, http: httpx.AsyncClient) -> OAuth2Credentials:
    """The credentials an authorization code grant leaves, as the OAuth callback stores them."""
    answer = await http.post(
        f"{peer.accounts_url}/oauth/v2/token",
        params={
            "grant_type": "authorization_code",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uri": REDIRECT_URI,
            "code": peer.authorization_code(),
        },
    )
    token = answer.json()
    return OAuth2Credentials(
        access_token=SecretStr(token["access_token"]),
        refresh_token=SecretStr(token["refresh_token"]),
        expires_at=datetime.now(UTC) + timedelta(seconds=token["expires_in"]),
        extra={"api_domain": token["api_domain"]},
    )


def _open(
    peer: ZohoPeer,
    http: httpx.AsyncClient,
    credentials: OAuth2Credentials,
    refreshed: list[Credentials] | None = None,
) -> ZohoConnector:
    async def remember(new: Credentials) -> None:
        assert refreshed is not None
        refreshed.append(new)

    context = ConnectorContext(
        allow_private_urls=True,
        oauth_client=OAuthClient(CLIENT_ID, SecretStr(CLIENT_SECRET)),
        on_credentials_refreshed=remember if refreshed is not None else None,
        vendor_origins={ACCOUNTS_EU: peer.accounts_url, API_EU: peer.api_url},
    )
    connector = SPEC.factory(ZohoSettings(accounts_server=ACCOUNTS_EU), credentials, http, context)
    assert isinstance(connector, ZohoConnector)
    return connector


@pytest.fixture
async def crm(zoho_peer: ZohoPeer, http: httpx.AsyncClient) -> ZohoConnector:
    return _open(zoho_peer, http, await _consent(zoho_peer, http))


def _refreshes(peer: ZohoPeer) -> list[dict[str, list[str]]]:
    """The refresh requests the accounts server received (the consent's exchange aside)."""
    forms = [parse_qs(body.decode()) for _, _, _, body in peer.seen("POST", "/oauth/v2/token")]
    return [form for form in forms if form.get("grant_type") == ["refresh_token"]]


def _bodies(peer: ZohoPeer, method: str, path: str) -> list[dict[str, object]]:
    return [json.loads(body) for _, p, _, body in peer.seen(method, path) if p == path]


async def _synced(crm: ZohoConnector, query: SyncQuery, at_most: int = 20) -> list[list[Contact]]:
    """Every page of a contact sync listing (a listing that does not end fails the test)."""
    pages = []
    for _ in range(at_most):
        page = await crm.sync_contacts(query)
        assert page.unreadable == []
        pages.append(page.items)
        if page.next_cursor is None:
            return pages
        query = SyncQuery(cursor=page.next_cursor)
    raise AssertionError(f"the listing did not end within {at_most} pages")


def _listings(peer: ZohoPeer, path: str) -> list[tuple[dict[str, list[str]], dict[str, str]]]:
    """The query and headers of each listing of ``path`` the API received."""
    return [
        (parse_qs(urlsplit(target).query), headers)
        for _, target, headers, _ in peer.seen("GET", path)
        if urlsplit(target).path == path
    ]


async def test_lists_contacts_page_by_page(zoho_peer: ZohoPeer, crm: ZohoConnector) -> None:
    assert (await crm.list_contacts(ListQuery())).items == []  # Zoho's 204 for no records
    for n in range(7):
        zoho_peer.seed("Contacts", {"Last_Name": f"Doe {n}", "Email": f"c{n}@example.com"})

    pages = []
    query = ListQuery(limit=3)
    while True:
        page = await crm.list_contacts(query)
        pages.append([c.email for c in page.items])
        if page.next_cursor is None:
            break
        query = ListQuery(limit=3, cursor=page.next_cursor)

    assert pages == [
        ["c0@example.com", "c1@example.com", "c2@example.com"],
        ["c3@example.com", "c4@example.com", "c5@example.com"],
        ["c6@example.com"],
    ]
    sent = zoho_peer.seen("GET", "/crm/v5/Contacts")
    assert all(h["authorization"].startswith("Zoho-oauthtoken 1000.") for _, _, h, _ in sent)


async def test_syncs_contacts_modified_since_oldest_first(
    zoho_peer: ZohoPeer, crm: ZohoConnector
) -> None:
    # Seeded out of order: the listing follows Modified_Time, not ids.
    seeded = {
        hour: zoho_peer.seed(
            "Contacts",
            {"Last_Name": f"H{hour}", "Email": f"h{hour}@example.com"},
            at=T0 + timedelta(hours=hour),
        )["id"]
        for hour in (4, 1, 3, 0, 2)
    }
    # Modified now, so it comes last though it was the first made.
    await crm.update_contact(seeded[0], ContactUpdate(job_title="Buyer"))
    since = T0 + timedelta(hours=2)

    pages = await _synced(crm, SyncQuery(limit=2, updated_since=since))

    contacts = [c for page in pages for c in page]
    assert [len(page) for page in pages] == [2, 2]
    assert [c.email for c in contacts] == [
        "h2@example.com",  # modified exactly at updated_since
        "h3@example.com",
        "h4@example.com",
        "h0@example.com",
    ]
    assert [c.updated_at for c in contacts[:3]] == [since + timedelta(hours=n) for n in range(3)]
    assert contacts[3].updated_at is not None
    assert contacts[3].updated_at > datetime.now(UTC) - timedelta(minutes=1)
    assert contacts[3].job_title == "Buyer"
    # Every page asks for the oldest change first and names the moment, a second early:
    # Zoho returns what was modified after it.
    listings = _listings(zoho_peer, "/crm/v5/Contacts")
    assert len(listings) == 2
    for params, headers in listings:
        assert (params["sort_by"], params["sort_order"]) == (["Modified_Time"], ["asc"])
        assert headers["if-modified-since"] == "2026-11-30T10:59:59+00:00"
    assert "page_token" not in listings[0][0]
    assert "page_token" in listings[1][0]


async def test_contact_sync_without_a_moment_lists_every_contact(
    zoho_peer: ZohoPeer, crm: ZohoConnector
) -> None:
    for n in range(3):
        zoho_peer.seed("Contacts", {"Last_Name": f"C{n}"}, at=T0 - timedelta(days=n))

    [page] = await _synced(crm, SyncQuery())

    assert [c.last_name for c in page] == ["C2", "C1", "C0"]
    [(_, headers)] = _listings(zoho_peer, "/crm/v5/Contacts")
    assert "if-modified-since" not in headers


async def test_contact_sync_with_nothing_modified_is_empty(
    zoho_peer: ZohoPeer, crm: ZohoConnector
) -> None:
    zoho_peer.seed("Contacts", {"Last_Name": "Unchanged"}, at=T0)

    # Zoho answers 304 Not Modified.
    page = await crm.sync_contacts(SyncQuery(updated_since=T0 + timedelta(seconds=1)))

    assert (page.items, page.next_cursor, page.unreadable) == ([], None, [])
    assert len(_listings(zoho_peer, "/crm/v5/Contacts")) == 1


async def test_a_synced_contact_that_does_not_read_is_reported_and_skipped(
    zoho_peer: ZohoPeer, crm: ZohoConnector
) -> None:
    zoho_peer.fail(
        "/crm/v5/Contacts",
        Fault(
            200,
            {
                "data": [
                    {"id": "1", "Last_Name": "Fine", "Modified_Time": "2026-11-30T10:00:00+01:00"},
                    {"id": "2", "Last_Name": "Unplaced", "Modified_Time": None},
                    {"id": "3", "Last_Name": "Odd", "Modified_Time": "last week"},
                ],
                "info": {"more_records": False},
            },
        ),
    )

    page = await crm.sync_contacts(SyncQuery(updated_since=T0))

    assert [(c.id, c.updated_at) for c in page.items] == [("1", T0)]
    assert [(u.source_id, u.reason) for u in page.unreadable] == [
        ("2", "Modified_Time: datetime_type"),
        ("3", "Modified_Time: datetime_from_date_parsing"),
    ]


async def test_a_contact_list_cursor_does_not_continue_a_sync(
    zoho_peer: ZohoPeer, crm: ZohoConnector
) -> None:
    for n in range(2):
        zoho_peer.seed("Contacts", {"Last_Name": f"C{n}"})
    listed = await crm.list_contacts(ListQuery(limit=1))
    assert listed.next_cursor is not None

    with pytest.raises(InvalidCursor):
        await crm.sync_contacts(SyncQuery(cursor=listed.next_cursor))


async def test_creates_finds_and_updates_a_contact_of_an_account(
    zoho_peer: ZohoPeer, crm: ZohoConnector
) -> None:
    account = await crm.create_company(CompanyDraft(name="Acme GmbH", domain="acme.example"))
    contact = await crm.create_contact(
        ContactDraft(
            email="ada@acme.example", first_name="Ada", last_name="Lovelace", company_id=account.id
        )
    )
    assert (contact.first_name, contact.last_name, contact.company_id) == (
        "Ada",
        "Lovelace",
        account.id,
    )
    assert (account.name, account.domain) == ("Acme GmbH", "acme.example")

    found = await crm.find_contact_by_email("ada@acme.example")
    assert found is not None
    assert found.id == contact.id
    assert await crm.find_contact_by_email("nobody@acme.example") is None

    updated = await crm.update_contact(contact.id, ContactUpdate(job_title="Analyst"))
    assert (updated.job_title, updated.email) == ("Analyst", "ada@acme.example")
    # Writes carry one record and switch off the organisation's automations.
    assert _bodies(zoho_peer, "PUT", f"/crm/v5/Contacts/{contact.id}") == [
        {"data": [{"Title": "Analyst"}], "trigger": []}
    ]


async def test_a_missing_mandatory_field_is_refused_with_its_name(crm: ZohoConnector) -> None:
    with pytest.raises(VendorRejected) as refused:
        await crm.create_contact(ContactDraft(email="no-last-name@example.com"))
    assert (refused.value.status, refused.value.code) == (400, "MANDATORY_NOT_FOUND")
    assert "Last_Name" in refused.value.reason
    assert refused.value.data["api_name"] == "Last_Name"
    assert as_application_error(refused.value).non_retryable


async def test_external_ids_live_in_a_custom_field(zoho_peer: ZohoPeer, crm: ZohoConnector) -> None:
    # A lookup before any create finds nothing and changes nothing.
    assert await crm.find_contact_by_external_id("lead-(42)") is None
    assert EXTERNAL_ID not in zoho_peer.custom_fields["Contacts"]

    contact = await crm.create_contact(ContactDraft(last_name="Hopper", external_id="lead-(42)"))
    found = await crm.find_contact_by_external_id("lead-(42)")
    assert found is not None
    assert (found.id, found.external_id) == (contact.id, "lead-(42)")
    # The field was created once, and the criteria escaped Zoho's syntax characters.
    assert len(zoho_peer.seen("POST", "/crm/v6/settings/fields")) == 1
    searched = [target for _, target, _, _ in zoho_peer.seen("GET", "/crm/v5/Contacts/search")]
    assert parse_qs(searched[0].split("?", 1)[1])["criteria"] == [
        f"({EXTERNAL_ID}:equals:lead-\\(42\\))"
    ]

    account = await crm.create_company(CompanyDraft(name="Umbrella", external_id="acct-7"))
    again = await crm.find_company_by_external_id("acct-7")
    assert again is not None
    assert again.id == account.id


async def test_deals_move_through_stages(zoho_peer: ZohoPeer, crm: ZohoConnector) -> None:
    [pipeline] = await crm.list_pipelines()
    stages = {s.id: s for s in pipeline.stages}
    assert list(stages) == [
        "Qualification",
        "Needs Analysis",
        "Proposal/Price Quote",
        "Negotiation/Review",
        "Closed Won",
        "Closed Lost",
    ]
    assert (stages["Closed Won"].closed, stages["Closed Won"].won) == (True, True)
    assert (stages["Closed Lost"].closed, stages["Closed Lost"].won) == (True, False)
    assert stages["Needs Analysis"].probability == 0.2

    account = await crm.create_company(CompanyDraft(name="Globex"))
    contact = await crm.create_contact(ContactDraft(last_name="Scorpio"))
    deal = await crm.create_deal(
        DealDraft(
            name="Globex website",
            amount=Decimal("12500.5"),
            stage_id="Qualification",
            close_date=date(2027, 3, 31),
            company_id=account.id,
            contact_ids=[contact.id],
            external_id="deal-1",
        )
    )
    assert (deal.name, deal.amount, deal.stage_id, deal.close_date) == (
        "Globex website",
        Decimal("12500.5"),
        "Qualification",
        date(2027, 3, 31),
    )
    assert (deal.company_id, deal.contact_ids) == (account.id, [contact.id])

    won = await crm.update_deal(deal.id, DealUpdate(stage_id="Closed Won"))
    assert won.stage_id == "Closed Won"
    found = await crm.find_deal_by_external_id("deal-1")
    assert found is not None
    assert found.stage_id == "Closed Won"

    with pytest.raises(Unsupported):
        await crm.create_deal(
            DealDraft(name="Two contacts", stage_id="Qualification", contact_ids=["1", "2"])
        )

    for n in range(2):
        await crm.create_deal(DealDraft(name=f"Deal {n}", stage_id="Needs Analysis"))
    first = await crm.list_deals(ListQuery(limit=2))
    assert first.next_cursor is not None
    second = await crm.list_deals(ListQuery(limit=2, cursor=first.next_cursor))
    assert [d.name for d in [*first.items, *second.items]] == ["Globex website", "Deal 0", "Deal 1"]
    assert second.next_cursor is None


async def test_notes_are_the_activities_of_a_record(
    zoho_peer: ZohoPeer, crm: ZohoConnector
) -> None:
    contact = await crm.create_contact(ContactDraft(last_name="Hopper"))
    other = await crm.create_contact(ContactDraft(last_name="Turing"))
    ref = RecordRef(kind="contact", id=contact.id)
    for n in range(3):
        await crm.create_activity(ActivityDraft(subject=f"Call {n}", body=f"n={n}", related=[ref]))
    await crm.create_activity(
        ActivityDraft(body="elsewhere", related=[RecordRef(kind="contact", id=other.id)])
    )

    first = await crm.list_activities(ActivityQuery(limit=2, related=ref))
    assert first.next_cursor is not None
    second = await crm.list_activities(ActivityQuery(limit=2, cursor=first.next_cursor))
    notes = [*first.items, *second.items]
    assert [(a.kind, a.subject, a.body) for a in notes] == [
        ("note", "Call 0", "n=0"),
        ("note", "Call 1", "n=1"),
        ("note", "Call 2", "n=2"),
    ]
    assert all(a.related == [ref] for a in notes)
    assert second.next_cursor is None
    assert _bodies(zoho_peer, "POST", "/crm/v5/Notes")[0]["data"] == [
        {
            "Note_Title": "Call 0",
            "Note_Content": "n=0",
            "Parent_Id": {"module": {"api_name": "Contacts"}, "id": contact.id},
        }
    ]

    with pytest.raises(Unsupported):
        await crm.create_activity(ActivityDraft(kind="call", related=[ref]))


async def test_verify_names_the_organisation(crm: ZohoConnector) -> None:
    account = await crm.verify()
    assert (account.account_id, account.name) == ("20050398221", "Acme Agency GmbH")
    assert account.detail["api_domain"] == API_EU


async def test_an_invalid_token_is_refreshed_once_and_handed_back(
    zoho_peer: ZohoPeer, http: httpx.AsyncClient
) -> None:
    credentials = await _consent(zoho_peer, http)
    zoho_peer.expire_all()  # Zoho no longer accepts it, though the store thinks it is fresh
    refreshed: list[Credentials] = []
    crm = _open(zoho_peer, http, credentials, refreshed)
    zoho_peer.seed("Accounts", {"Account_Name": "Initech"})

    page = await crm.list_companies(ListQuery())

    assert [c.name for c in page.items] == ["Initech"]
    [new] = refreshed
    assert isinstance(new, OAuth2Credentials)
    assert new.access_token != credentials.access_token
    assert new.refresh_token == credentials.refresh_token
    assert new.extra == {"api_domain": API_EU}
    assert crm.credentials == new
    # The refresh went to the EU accounts server with the client's credentials in the body.
    [form] = _refreshes(zoho_peer)
    assert form["client_id"] == [CLIENT_ID]
    assert form["refresh_token"] == [credentials.refresh_token.get_secret_value()]  # type: ignore[union-attr]


async def test_a_token_still_invalid_after_refresh_is_an_auth_failure(
    zoho_peer: ZohoPeer, crm: ZohoConnector
) -> None:
    invalid = Fault.error(401, "INVALID_TOKEN", "invalid oauth token")
    zoho_peer.fail("/crm/v5/Deals", invalid, invalid)

    with pytest.raises(AuthFailed, match="invalid oauth token"):
        await crm.list_deals(ListQuery())

    assert len(_refreshes(zoho_peer)) == 1


async def test_a_revoked_refresh_token_is_an_auth_failure(
    zoho_peer: ZohoPeer, http: httpx.AsyncClient
) -> None:
    credentials = await _consent(zoho_peer, http)
    crm = _open(zoho_peer, http, credentials)
    assert await crm.revoke() is True
    zoho_peer.expire_all()

    # Zoho answers the refresh with {"error": "invalid_code"} and status 200.
    with pytest.raises(AuthFailed, match="invalid_code") as failed:
        await crm.list_contacts(ListQuery())
    refresh_token = credentials.refresh_token
    assert refresh_token is not None
    assert refresh_token.get_secret_value() not in str(as_application_error(failed.value))


async def test_an_expiring_token_is_refreshed_before_use(
    zoho_peer: ZohoPeer, http: httpx.AsyncClient
) -> None:
    credentials = (await _consent(zoho_peer, http)).model_copy(
        update={"expires_at": datetime.now(UTC) + timedelta(seconds=10)}
    )
    refreshed: list[Credentials] = []
    crm = _open(zoho_peer, http, credentials, refreshed)

    await crm.list_contacts(ListQuery())

    assert len(refreshed) == 1
    [(_, _, headers, _)] = zoho_peer.seen("GET", "/crm/v5/Contacts")
    new = refreshed[0]
    assert isinstance(new, OAuth2Credentials)
    assert headers["authorization"] == f"Zoho-oauthtoken {new.access_token.get_secret_value()}"


async def test_the_api_domain_comes_from_the_token_response(
    zoho_peer: ZohoPeer, http: httpx.AsyncClient
) -> None:
    # Credentials stored without a domain (or from before a move): the refresh names it.
    credentials = (await _consent(zoho_peer, http)).model_copy(update={"extra": {}})
    refreshed: list[Credentials] = []
    crm = _open(zoho_peer, http, credentials, refreshed)

    await crm.list_contacts(ListQuery())

    assert refreshed[0].extra == {"api_domain": API_EU}  # type: ignore[attr-defined]


async def test_an_api_domain_that_is_not_zohos_is_refused(
    zoho_peer: ZohoPeer, http: httpx.AsyncClient
) -> None:
    credentials = await _consent(zoho_peer, http)
    zoho_peer.api_domain = "https://zohoapis.attacker.example"
    zoho_peer.expire_all()
    crm = _open(zoho_peer, http, credentials)

    with pytest.raises(SchemaMismatch) as mismatch:
        await crm.list_contacts(ListQuery())

    assert mismatch.value.field == "$.api_domain"
    assert len(zoho_peer.seen("GET", "/crm/")) == 1  # only the refused first attempt


async def test_429_honours_retry_after(zoho_peer: ZohoPeer, crm: ZohoConnector) -> None:
    zoho_peer.fail(
        "/crm/v5/Contacts",
        Fault.error(429, "TOO_MANY_REQUESTS", "too many requests", **{"Retry-After": "30"}),
    )
    with pytest.raises(RateLimited) as limited:
        await crm.list_contacts(ListQuery())
    assert limited.value.retry_after == 30
    assert as_application_error(limited.value).next_retry_delay == timedelta(seconds=30)


async def test_a_spent_allowance_is_rate_limited(zoho_peer: ZohoPeer, crm: ZohoConnector) -> None:
    zoho_peer.allowance = 0
    with pytest.raises(RateLimited, match="maximum number of API calls"):
        await crm.list_companies(ListQuery())


@pytest.mark.parametrize(
    "fault",
    [
        Fault.error(500, "INTERNAL_ERROR", "Internal Server Error"),
        Fault(502, b"<html><body>Bad Gateway</body></html>", {"Content-Type": "text/html"}),
    ],
)
async def test_5xx_is_retryable(zoho_peer: ZohoPeer, crm: ZohoConnector, fault: Fault) -> None:
    zoho_peer.fail("/crm/v5/Deals", fault)
    with pytest.raises(VendorUnavailable) as unavailable:
        await crm.list_deals(ListQuery())
    assert unavailable.value.status == fault.status
    assert not as_application_error(unavailable.value).non_retryable
    assert (await crm.list_deals(ListQuery())).items == []


async def test_a_deal_without_a_stage_is_a_schema_mismatch(
    zoho_peer: ZohoPeer, crm: ZohoConnector
) -> None:
    zoho_peer.fail(
        "/crm/v5/Deals",
        Fault(200, {"data": [{"id": "1", "Deal_Name": "Broken"}], "info": {"more_records": False}}),
    )
    with pytest.raises(SchemaMismatch) as mismatch:
        await crm.list_deals(ListQuery())
    assert mismatch.value.field == "$.data[0].Stage"


async def test_more_records_without_a_token_is_a_schema_mismatch(
    zoho_peer: ZohoPeer, crm: ZohoConnector
) -> None:
    zoho_peer.fail(
        "/crm/v5/Contacts",
        Fault(200, {"data": [{"id": "1", "Last_Name": "X"}], "info": {"more_records": True}}),
    )
    with pytest.raises(SchemaMismatch) as mismatch:
        await crm.list_contacts(ListQuery())
    assert mismatch.value.field == "$.info.next_page_token"


def test_the_spec_resolves_oauth_endpoints_per_data_centre() -> None:
    assert SPEC.auth_kinds == ("oauth2_authorization_code",)
    assert SPEC.oauth is not None
    resolved = SPEC.oauth.resolve(ZohoSettings(accounts_server="https://accounts.zoho.in"))
    assert resolved.token_url == "https://accounts.zoho.in/oauth/v2/token"
    assert resolved.authorize_url == "https://accounts.zoho.in/oauth/v2/auth"
    schema = SPEC.form_schema()
    assert "https://accounts.zohocloud.ca" in schema["properties"]["accounts_server"]["enum"]
    with pytest.raises(ValueError, match="accounts_server"):
        ZohoSettings(accounts_server="https://evil.example")


async def test_production_requests_follow_the_data_centre() -> None:
    """No peer and no origin override: the EU accounts server refreshes the token, and the API
    domain it names receives the calls, in Zoho's shapes."""
    credentials = OAuth2Credentials(
        access_token=SecretStr("1000.old"),
        refresh_token=SecretStr("1000.refresh"),
        expires_at=datetime.now(UTC) + timedelta(minutes=30),
        extra={"api_domain": "https://www.zohoapis.com"},  # before the organisation moved
    )
    context = ConnectorContext(oauth_client=OAuthClient(CLIENT_ID, SecretStr(CLIENT_SECRET)))
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as vendor:
        moved = vendor.get("https://www.zohoapis.com/crm/v5/Contacts").respond(
            401, json={"code": "INVALID_TOKEN", "details": {}, "message": "invalid oauth token",
                       "status": "error"}
        )  # fmt: skip
        token = vendor.post("https://accounts.zoho.eu/oauth/v2/token").respond(
            200,
            json={"access_token": "1000.new", "api_domain": API_EU, "token_type": "Bearer",
                  "expires_in": 3600},
        )  # fmt: skip
        listed = vendor.get(f"{API_EU}/crm/v5/Contacts").respond(204)
        async with connector_client(allow_private=False) as http:
            connector = SPEC.factory(
                ZohoSettings(accounts_server=ACCOUNTS_EU), credentials, http, context
            )
            assert isinstance(connector, ZohoConnector)
            page = await connector.list_contacts(ListQuery(limit=25))

    assert page.items == []
    assert moved.call_count == 1
    assert parse_qs(token.calls.last.request.content.decode()) == {
        "grant_type": ["refresh_token"],
        "client_id": [CLIENT_ID],
        "client_secret": [CLIENT_SECRET],
        "refresh_token": ["1000.refresh"],
    }
    request = listed.calls.last.request
    assert request.headers["authorization"] == "Zoho-oauthtoken 1000.new"
    assert request.url.params["per_page"] == "25"
    assert request.url.params["fields"].split(",")[:3] == ["First_Name", "Last_Name", "Email"]
    assert connector.credentials.extra == {"api_domain": API_EU}


async def test_an_unknown_record_is_not_found(zoho_peer: ZohoPeer, crm: ZohoConnector) -> None:
    with pytest.raises(VendorNotFound):
        await crm.get_contact("5725767000000999999")  # Zoho's 204
    with pytest.raises(VendorNotFound):
        await crm.get_deal("../settings")  # never reaches the URL path
    assert not zoho_peer.seen("GET", "/crm/v5/settings")


async def test_the_peer_sorts_and_narrows_listings_as_zoho_documents(
    zoho_peer: ZohoPeer, http: httpx.AsyncClient
) -> None:
    """``sort_by`` / ``sort_order`` (``desc`` unless said), ``If-Modified-Since`` (modified
    strictly after the moment; 304 when nothing was)."""
    credentials = await _consent(zoho_peer, http)
    auth = {"Authorization": f"Zoho-oauthtoken {credentials.access_token.get_secret_value()}"}
    late, early = (
        zoho_peer.seed("Contacts", {"Last_Name": name}, at=T0 + timedelta(hours=h))["id"]
        for name, h in (("Late", 2), ("Early", 1))
    )

    async def listed(params: dict[str, str], **headers: str) -> httpx.Response:
        return await http.get(
            f"{zoho_peer.api_url}/crm/v5/Contacts",
            params={"fields": "Last_Name", **params},
            headers={**auth, **headers},
        )

    async def ids(params: dict[str, str], **headers: str) -> list[str]:
        answer = await listed(params, **headers)
        assert answer.status_code == 200, answer.text
        return [record["id"] for record in answer.json()["data"]]

    assert await ids({}) == [late, early]  # by id, as the peer lists without sort parameters
    assert await ids({"sort_by": "Modified_Time", "sort_order": "asc"}) == [early, late]
    assert await ids({"sort_by": "Modified_Time"}) == [late, early]  # desc by default
    assert await ids({"sort_order": "desc"}) == [early, late]  # by id, descending
    answer = await listed({"sort_by": "Last_Name"})
    assert (answer.status_code, answer.json()["code"]) == (400, "INVALID_DATA")

    # Modified after 10:00 in Berlin's winter time (09:00 UTC): both; after 10:00 UTC: the later.
    assert await ids({}, **{"If-Modified-Since": "2026-11-30T10:00:00+01:00"}) == [late, early]
    assert await ids({}, **{"If-Modified-Since": "2026-11-30T10:00:00+00:00"}) == [late]
    unchanged = await listed({}, **{"If-Modified-Since": "2026-11-30T11:00:00+00:00"})
    assert (unchanged.status_code, unchanged.content) == (304, b"")
