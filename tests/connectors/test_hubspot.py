"""The HubSpot connector against the HubSpot peer, over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

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
    CRMPort,
    DealDraft,
    DealUpdate,
    RecordRef,
)
from connectors.crm.hubspot import (
    API_BASE,
    EXTERNAL_ID,
    SPEC,
    HubSpotConnector,
    HubSpotSettings,
    PrivateAppToken,
)
from connectors.http import (
    AuthFailed,
    InvalidCursor,
    RateLimited,
    ResponseTooLarge,
    SchemaMismatch,
    Unsupported,
    VendorNotFound,
    VendorRejected,
    VendorUnavailable,
    as_application_error,
    connector_client,
)
from connectors.ports import ListQuery, SyncQuery
from connectors.registry import (
    ConnectorContext,
    Credentials,
    OAuth2Credentials,
    OAuthClient,
)
from tests.peers.hubspot import (
    CLIENT_ID,
    CLIENT_SECRET,
    PRIVATE_APP_TOKEN,
    Fault,
    HubSpotPeer,
)

pytest_plugins = ["tests.peers.hubspot"]

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with connector_client(allow_private=True) as client:
        yield client


def _context(peer: HubSpotPeer, refreshed: list[Credentials] | None = None) -> ConnectorContext:
    async def remember(credentials: Credentials) -> None:
        assert refreshed is not None
        refreshed.append(credentials)

    return ConnectorContext(
        allow_private_urls=True,
        oauth_client=OAuthClient(CLIENT_ID, SecretStr(CLIENT_SECRET)),
        on_credentials_refreshed=remember if refreshed is not None else None,
        vendor_origins={API_BASE: peer.url},
    )


def _open(
    credentials: Credentials, http: httpx.AsyncClient, context: ConnectorContext
) -> HubSpotConnector:
    """The connector as the registry builds it (its spec's factory)."""
    connector = SPEC.factory(HubSpotSettings(), credentials, http, context)
    assert isinstance(connector, HubSpotConnector)
    return connector


def _private_app(
    peer: HubSpotPeer, http: httpx.AsyncClient, token: str = PRIVATE_APP_TOKEN
) -> CRMPort:
    return _open(PrivateAppToken(api_key=SecretStr(token)), http, _context(peer))


@pytest.fixture
def crm(hubspot_peer: HubSpotPeer, http: httpx.AsyncClient) -> CRMPort:
    return _private_app(hubspot_peer, http)


def _bodies(peer: HubSpotPeer, method: str, path: str) -> list[dict[str, object]]:
    return [json.loads(body) for _, _, _, body in peer.seen(method, path)]


def _ms(moment: datetime) -> str:
    """An instant in epoch milliseconds, as HubSpot's search filters take date-times."""
    return str(int(moment.timestamp() * 1000))


async def _synced(crm: CRMPort, query: SyncQuery, at_most: int = 20) -> list[list[Contact]]:
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


def _contact_searches(peer: HubSpotPeer) -> list[dict[str, Any]]:
    return [
        json.loads(body) for _, _, _, body in peer.seen("POST", "/crm/v3/objects/contacts/search")
    ]


def _search_window(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """The ``after`` and the ``lastmodifieddate GTE`` bound of a contact sync's search."""
    [group] = body.get("filterGroups") or [{"filters": [{}]}]
    [rule] = group["filters"]
    return body.get("after"), rule.get("value")


async def test_lists_contacts_page_by_page(hubspot_peer: HubSpotPeer, crm: CRMPort) -> None:
    for n in range(7):
        hubspot_peer.seed(
            "contacts", {"email": f"c{n}@example.com", "firstname": f"C{n}", "lastname": "Doe"}
        )

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
    # HubSpot's own cursor travelled as `after`, the properties the port needs were asked for.
    listed = hubspot_peer.seen("GET", "/crm/v3/objects/contacts")
    assert len(listed) == 3
    assert all(
        headers["authorization"] == f"Bearer {PRIVATE_APP_TOKEN}" for _, _, headers, _ in listed
    )


async def test_syncs_contacts_changed_since_oldest_first(
    hubspot_peer: HubSpotPeer, crm: CRMPort
) -> None:
    # Seeded out of order: the listing follows lastmodifieddate, not ids.
    seeded = {
        minute: hubspot_peer.seed(
            "contacts", {"email": f"m{minute}@example.com"}, at=T0 + timedelta(minutes=minute)
        )["id"]
        for minute in (4, 1, 3, 0, 2)
    }
    # Changed now, so it comes last though it was the first made.
    await crm.update_contact(seeded[0], ContactUpdate(job_title="Buyer"))
    since = T0 + timedelta(minutes=2)

    pages = await _synced(crm, SyncQuery(limit=2, updated_since=since))

    contacts = [c for page in pages for c in page]
    assert [len(page) for page in pages] == [2, 2]
    assert [c.email for c in contacts] == [
        "m2@example.com",  # changed exactly at updated_since
        "m3@example.com",
        "m4@example.com",
        "m0@example.com",
    ]
    assert [c.updated_at for c in contacts[:3]] == [since + timedelta(minutes=n) for n in range(3)]
    assert contacts[3].updated_at is not None
    assert contacts[3].updated_at > datetime.now(UTC) - timedelta(minutes=1)
    assert contacts[3].job_title == "Buyer"
    # One search per page, in HubSpot's shapes: an epoch-millisecond GTE filter, oldest first.
    first, second = _contact_searches(hubspot_peer)
    assert {"email", "lastmodifieddate"} <= set(first.pop("properties"))
    assert second.pop("properties")
    assert first == {
        "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
        "limit": 2,
        "filterGroups": [
            {
                "filters": [
                    {"propertyName": "lastmodifieddate", "operator": "GTE", "value": _ms(since)}
                ]
            }
        ],
    }
    assert second == {**first, "after": "2"}


async def test_contact_sync_without_a_moment_lists_every_contact(
    hubspot_peer: HubSpotPeer, crm: CRMPort
) -> None:
    for n in range(3):
        hubspot_peer.seed("contacts", {"email": f"c{n}@example.com"}, at=T0 - timedelta(days=n))

    [page] = await _synced(crm, SyncQuery())

    assert [c.email for c in page] == ["c2@example.com", "c1@example.com", "c0@example.com"]
    [body] = _contact_searches(hubspot_peer)
    assert "filterGroups" not in body


async def test_contact_sync_starts_its_search_again_before_the_result_cap(
    hubspot_peer: HubSpotPeer, crm: CRMPort, monkeypatch: pytest.MonkeyPatch
) -> None:
    # HubSpot's cap is 10,000 results per query; five keeps the test small.
    hubspot_peer.search_cap = 5
    monkeypatch.setattr("connectors.crm.hubspot.SEARCH_RESULT_CAP", 5)
    ids = []
    for n in range(9):
        at = T0 + timedelta(minutes=n)
        ids.append(hubspot_peer.seed("contacts", {"email": f"c{n}@example.com"}, at=at)["id"])

    pages = await _synced(crm, SyncQuery(limit=2))

    # The page after `after` 4 would reach past the cap: the search starts again from the last
    # contact's lastmodifieddate, which therefore comes twice (a sync upserts it).
    assert [c.id for page in pages for c in page] == [
        *ids[0:4], ids[3], *ids[4:7], ids[6], *ids[7:9]
    ]  # fmt: skip
    assert [_search_window(body) for body in _contact_searches(hubspot_peer)] == [
        (None, None),
        ("2", None),
        (None, _ms(T0 + timedelta(minutes=3))),
        ("2", _ms(T0 + timedelta(minutes=3))),
        (None, _ms(T0 + timedelta(minutes=6))),
        ("2", _ms(T0 + timedelta(minutes=6))),
    ]


async def test_more_contacts_changed_in_one_millisecond_than_the_cap_are_unsupported(
    hubspot_peer: HubSpotPeer, crm: CRMPort, monkeypatch: pytest.MonkeyPatch
) -> None:
    hubspot_peer.search_cap = 3
    monkeypatch.setattr("connectors.crm.hubspot.SEARCH_RESULT_CAP", 3)
    for n in range(4):
        hubspot_peer.seed("contacts", {"email": f"c{n}@example.com"}, at=T0)

    # Starting again from T0 would read the same three contacts forever.
    with pytest.raises(Unsupported, match="same millisecond"):
        await _synced(crm, SyncQuery(limit=1))
    assert len(_contact_searches(hubspot_peer)) == 6


async def test_a_synced_contact_that_does_not_read_is_reported_and_skipped(
    hubspot_peer: HubSpotPeer, crm: CRMPort
) -> None:
    def contact(contact_id: str, modified: str) -> dict[str, object]:
        return {
            "id": contact_id,
            "properties": {"email": f"{contact_id}@example.com", "lastmodifieddate": modified},
            "createdAt": "2026-11-30T09:00:00.000Z",
            "updatedAt": "2026-11-30T09:00:00.000Z",
            "archived": False,
        }

    hubspot_peer.fail(
        "/crm/v3/objects/contacts/search",
        Fault(
            200,
            {
                "total": 3,
                "results": [
                    contact("1", "2026-11-30T09:00:00.000Z"),
                    contact("2", "yesterday"),
                    contact("3", ""),
                ],
            },
        ),
    )

    page = await crm.sync_contacts(SyncQuery())

    assert [c.id for c in page.items] == ["1"]
    assert [(u.source_id, u.reason) for u in page.unreadable] == [
        ("2", "properties.lastmodifieddate: datetime_from_date_parsing"),
        ("3", "properties.lastmodifieddate: datetime_type"),
    ]
    assert page.next_cursor is None


async def test_a_contact_list_cursor_does_not_continue_a_sync(
    hubspot_peer: HubSpotPeer, crm: CRMPort
) -> None:
    for n in range(2):
        hubspot_peer.seed("contacts", {"email": f"c{n}@example.com"})
    listed = await crm.list_contacts(ListQuery(limit=1))
    assert listed.next_cursor is not None

    with pytest.raises(InvalidCursor):
        await crm.sync_contacts(SyncQuery(cursor=listed.next_cursor))


async def test_creates_finds_and_updates_a_contact_of_a_company(
    hubspot_peer: HubSpotPeer, crm: CRMPort
) -> None:
    company = await crm.create_company(CompanyDraft(name="Acme GmbH", domain="acme.example"))
    contact = await crm.create_contact(
        ContactDraft(
            email="ada@acme.example", first_name="Ada", last_name="Lovelace", company_id=company.id
        )
    )
    assert (contact.first_name, contact.last_name, contact.company_id) == (
        "Ada",
        "Lovelace",
        company.id,
    )
    assert contact.created_at is not None

    found = await crm.find_contact_by_email("ADA@acme.example")
    assert found is not None
    assert found.id == contact.id
    assert await crm.find_contact_by_email("nobody@acme.example") is None

    updated = await crm.update_contact(
        contact.id, ContactUpdate(job_title="Analyst", phone="+49 30 1234")
    )
    assert (updated.job_title, updated.phone, updated.email) == (
        "Analyst",
        "+49 30 1234",
        "ada@acme.example",
    )
    # The contact was created with a primary association to its company (type 1), in one call.
    created = _bodies(hubspot_peer, "POST", "/crm/v3/objects/contacts")[0]
    assert created == {
        "properties": {"email": "ada@acme.example", "firstname": "Ada", "lastname": "Lovelace"},
        "associations": [
            {
                "to": {"id": company.id},
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 1}],
            }
        ],
    }
    assert _bodies(hubspot_peer, "POST", "/crm/v3/objects/contacts/search")[0]["filterGroups"] == [
        {"filters": [{"propertyName": "email", "operator": "EQ", "value": "ADA@acme.example"}]}
    ]


async def test_moves_a_contact_to_another_company(hubspot_peer: HubSpotPeer, crm: CRMPort) -> None:
    company = await crm.create_company(CompanyDraft(name="Initech"))
    contact = await crm.create_contact(ContactDraft(email="peter@initech.example"))
    assert contact.company_id is None

    moved = await crm.update_contact(contact.id, ContactUpdate(company_id=company.id))

    assert moved.company_id == company.id
    assert hubspot_peer.seen(
        "PUT", f"/crm/v4/objects/contacts/{contact.id}/associations/default/companies/{company.id}"
    )


async def test_external_ids_make_creates_findable_and_unique(
    hubspot_peer: HubSpotPeer, crm: CRMPort
) -> None:
    # A lookup before any create finds nothing and changes nothing.
    assert await crm.find_contact_by_external_id("lead-42") is None
    assert EXTERNAL_ID not in hubspot_peer.custom_properties["contacts"]

    contact = await crm.create_contact(ContactDraft(email="x@example.com", external_id="lead-42"))
    # The first create made the property, unique, once.
    assert hubspot_peer.custom_properties["contacts"][EXTERNAL_ID]["hasUniqueValue"] is True
    found = await crm.find_contact_by_external_id("lead-42")
    assert found is not None
    assert found.id == contact.id
    assert found.external_id == "lead-42"
    assert len(hubspot_peer.seen("POST", "/crm/v3/properties/contacts")) == 1

    # A retried create that skipped the lookup is refused by HubSpot, not duplicated.
    with pytest.raises(VendorRejected) as refused:
        await crm.create_contact(ContactDraft(email="y@example.com", external_id="lead-42"))
    assert (refused.value.status, refused.value.code) == (409, "CONFLICT")
    assert len(hubspot_peer.records["contacts"]) == 1

    company = await crm.create_company(CompanyDraft(name="Umbrella", external_id="acct-7"))
    again = await crm.find_company_by_external_id("acct-7")
    assert again is not None
    assert again.id == company.id


async def test_a_page_of_contacts_is_looked_up_in_one_search_per_hundred(
    hubspot_peer: HubSpotPeer, crm: CRMPort
) -> None:
    # No external-id property yet: only the e-mails are asked.
    plain = await crm.create_contact(ContactDraft(email="Plain@Example.com"))
    assert [c.id for c in await crm.find_contacts(["shop:1"], ["plain@example.COM"])] == [plain.id]
    assert "IN" in json.dumps(_contact_searches(hubspot_peer)[-1])

    marked = [
        await crm.create_contact(ContactDraft(email=f"m{n}@example.com", external_id=f"shop:{n}"))
        for n in range(150)
    ]
    before = len(_contact_searches(hubspot_peer))
    markers = [f"shop:{n}" for n in range(0, 300, 2)]  # 150 asked, 75 of them made
    found = await crm.find_contacts(markers, ["plain@example.com", "nobody@example.com"])
    assert sorted(c.id for c in found) == sorted(
        [plain.id] + [c.id for n, c in enumerate(marked) if n % 2 == 0]
    )
    searches = _contact_searches(hubspot_peer)[before:]
    assert len(searches) == 2  # a hundred values a filter at most
    first = searches[0]["filterGroups"]
    assert [len(group["filters"][0]["values"]) for group in first] == [100, 2]
    assert await crm.find_contacts([], []) == []


async def test_deals_move_through_pipeline_stages(hubspot_peer: HubSpotPeer, crm: CRMPort) -> None:
    pipelines = await crm.list_pipelines()
    assert [p.id for p in pipelines] == ["default"]
    stages = {s.id: s for s in pipelines[0].stages}
    assert stages["closedwon"].closed
    assert stages["closedwon"].won
    assert stages["closedlost"].closed
    assert not stages["closedlost"].won
    assert stages["qualifiedtobuy"].probability == 0.4
    assert stages["qualifiedtobuy"].order == 1

    company = await crm.create_company(CompanyDraft(name="Globex"))
    contact = await crm.create_contact(ContactDraft(email="hank@globex.example"))
    deal = await crm.create_deal(
        DealDraft(
            name="Globex website",
            amount=Decimal("12500.50"),
            currency="EUR",
            stage_id="appointmentscheduled",
            close_date=date(2027, 3, 31),
            company_id=company.id,
            contact_ids=[contact.id],
            external_id="deal-1",
        )
    )
    assert (deal.name, deal.amount, deal.currency, deal.pipeline_id, deal.stage_id) == (
        "Globex website",
        Decimal("12500.50"),
        "EUR",
        "default",
        "appointmentscheduled",
    )
    assert (deal.company_id, deal.contact_ids, deal.close_date) == (
        company.id,
        [contact.id],
        date(2027, 3, 31),
    )

    won = await crm.update_deal(deal.id, DealUpdate(stage_id="closedwon", amount=Decimal(13000)))
    assert (won.stage_id, won.amount) == ("closedwon", Decimal(13000))
    found = await crm.find_deal_by_external_id("deal-1")
    assert found is not None
    assert found.stage_id == "closedwon"

    for n in range(3):
        await crm.create_deal(DealDraft(name=f"Deal {n}", stage_id="qualifiedtobuy"))
    first = await crm.list_deals(ListQuery(limit=2))
    assert first.next_cursor is not None
    second = await crm.list_deals(ListQuery(limit=2, cursor=first.next_cursor))
    assert [d.name for d in [*first.items, *second.items]] == [
        "Globex website",
        "Deal 0",
        "Deal 1",
        "Deal 2",
    ]
    assert second.next_cursor is None


async def test_logs_and_lists_activities_of_a_record(
    hubspot_peer: HubSpotPeer, crm: CRMPort
) -> None:
    contact = await crm.create_contact(ContactDraft(email="grace@example.com"))
    other = await crm.create_contact(ContactDraft(email="alan@example.com"))
    when = datetime(2026, 11, 30, 9, 30, tzinfo=UTC)
    note = await crm.create_activity(
        ActivityDraft(
            body="Asked for a quote",
            occurred_at=when,
            related=[RecordRef(kind="contact", id=contact.id)],
        )
    )
    call = await crm.create_activity(
        ActivityDraft(
            kind="call",
            subject="Intro call",
            body="30 minutes",
            occurred_at=when + timedelta(hours=1),
            related=[RecordRef(kind="contact", id=contact.id)],
        )
    )
    await crm.create_activity(
        ActivityDraft(body="Not this one", related=[RecordRef(kind="contact", id=other.id)])
    )
    assert (note.kind, note.occurred_at) == ("note", when)

    seen: list[tuple[str, str | None, str, str]] = []
    query = ActivityQuery(limit=10, related=RecordRef(kind="contact", id=contact.id))
    while True:
        page = await crm.list_activities(query)
        seen.extend((a.kind, a.subject, a.body, a.id) for a in page.items)
        if page.next_cursor is None:
            break
        query = ActivityQuery(limit=10, cursor=page.next_cursor)

    assert seen == [
        ("note", None, "Asked for a quote", note.id),
        ("call", "Intro call", "30 minutes", call.id),
    ]
    # Notes are linked with HubSpot's note→contact association type.
    created = _bodies(hubspot_peer, "POST", "/crm/v3/objects/notes")[0]
    assert created["associations"] == [
        {
            "to": {"id": contact.id},
            "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 202}],
        }
    ]


async def test_an_activity_keeps_its_external_id_in_a_group_of_our_own(
    hubspot_peer: HubSpotPeer, crm: CRMPort
) -> None:
    contact = await crm.create_contact(ContactDraft(email="ada@example.com"))
    for key in ("run-1-note", "run-2-note"):
        await crm.create_activity(
            ActivityDraft(
                body="Scored 80",
                external_id=key,
                related=[RecordRef(kind="contact", id=contact.id)],
            )
        )
    # Notes have no default group a custom property fits: ours, created once, holds it.
    assert "bizosaas" in hubspot_peer.property_groups["notes"]
    assert hubspot_peer.custom_properties["notes"][EXTERNAL_ID]["groupName"] == "bizosaas"
    assert len(_bodies(hubspot_peer, "POST", "/crm/v3/properties/notes/groups")) == 1
    notes = [r["properties"] for r in hubspot_peer.records["notes"].values()]
    assert sorted(n[EXTERNAL_ID] for n in notes) == ["run-1-note", "run-2-note"]


async def test_verify_names_the_account(crm: CRMPort) -> None:
    account = await crm.verify()
    assert account.account_id == "62515"
    assert account.detail == {
        "auth": "private_app",
        "time_zone": "Europe/Berlin",
        "currency": "EUR",
    }


async def test_a_wrong_token_is_an_auth_failure(
    hubspot_peer: HubSpotPeer, http: httpx.AsyncClient
) -> None:
    crm = _private_app(hubspot_peer, http, token="pat-na1-not-a-token")
    with pytest.raises(AuthFailed) as failed:
        await crm.verify()
    assert failed.value.status == 401
    assert "pat-na1-not-a-token" not in str(failed.value)
    error = as_application_error(failed.value)
    assert error.non_retryable
    assert error.type == "AuthFailed"


async def test_a_missing_scope_is_an_auth_failure(hubspot_peer: HubSpotPeer, crm: CRMPort) -> None:
    hubspot_peer.fail(
        "/crm/v3/objects/deals",
        Fault.error(
            403,
            "MISSING_SCOPES",
            "This app hasn't been granted all required scopes to make this call.",
        ),
    )
    with pytest.raises(AuthFailed, match="required scopes"):
        await crm.list_deals(ListQuery())


async def test_429_honours_retry_after(hubspot_peer: HubSpotPeer, crm: CRMPort) -> None:
    hubspot_peer.fail("/crm/v3/objects/contacts", Fault.rate_limited(retry_after=7))

    with pytest.raises(RateLimited) as limited:
        await crm.list_contacts(ListQuery())

    assert limited.value.retry_after == 7
    error = as_application_error(limited.value)
    assert not error.non_retryable
    assert error.next_retry_delay == timedelta(seconds=7)


async def test_past_the_ten_second_window_waits_for_the_window(
    hubspot_peer: HubSpotPeer, crm: CRMPort
) -> None:
    hubspot_peer.interval_max = 2
    await crm.list_contacts(ListQuery())
    await crm.list_companies(ListQuery())

    with pytest.raises(RateLimited, match="TEN_SECONDLY_ROLLING") as limited:
        await crm.list_deals(ListQuery())
    # No Retry-After: the window HubSpot announces in its rate-limit headers.
    assert limited.value.retry_after == 10.0


async def test_the_daily_limit_names_no_delay(hubspot_peer: HubSpotPeer, crm: CRMPort) -> None:
    hubspot_peer.daily_max = 0
    with pytest.raises(RateLimited, match="DAILY") as limited:
        await crm.list_contacts(ListQuery())
    assert limited.value.retry_after is None


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_retryable(hubspot_peer: HubSpotPeer, crm: CRMPort, status: int) -> None:
    hubspot_peer.fail(
        "/crm/v3/objects/companies",
        Fault.error(status, "INTERNAL_ERROR", "internal error", **{"Retry-After": "3"}),
    )
    with pytest.raises(VendorUnavailable) as unavailable:
        await crm.list_companies(ListQuery())
    assert unavailable.value.status == status
    assert unavailable.value.retry_after == 3
    assert not as_application_error(unavailable.value).non_retryable
    # The next attempt goes through.
    assert (await crm.list_companies(ListQuery())).items == []


async def test_a_deal_without_its_stage_is_a_schema_mismatch(
    hubspot_peer: HubSpotPeer, crm: CRMPort
) -> None:
    hubspot_peer.fail(
        "/crm/v3/objects/deals",
        Fault(
            200,
            {
                "results": [
                    {
                        "id": "1",
                        "properties": {"dealname": "Broken", "amount": "10"},
                        "createdAt": "2026-11-30T10:00:00Z",
                        "updatedAt": "2026-11-30T10:00:00Z",
                        "archived": False,
                    }
                ]
            },
        ),
    )
    with pytest.raises(SchemaMismatch) as mismatch:
        await crm.list_deals(ListQuery())
    assert mismatch.value.field == "$.results[0].properties.dealstage"
    assert as_application_error(mismatch.value).non_retryable


async def test_a_page_without_results_is_a_schema_mismatch(
    hubspot_peer: HubSpotPeer, crm: CRMPort
) -> None:
    hubspot_peer.fail("/crm/v3/objects/contacts", Fault(200, {"items": []}))
    with pytest.raises(SchemaMismatch) as mismatch:
        await crm.list_contacts(ListQuery())
    assert mismatch.value.field == "$.results"


async def test_an_invalid_amount_is_a_schema_mismatch(
    hubspot_peer: HubSpotPeer, crm: CRMPort
) -> None:
    hubspot_peer.seed("deals", {"dealname": "Odd", "dealstage": "closedwon", "amount": "lots"})
    with pytest.raises(SchemaMismatch) as mismatch:
        await crm.list_deals(ListQuery())
    assert mismatch.value.field == "$.results[0].properties.amount"


async def test_oauth_tokens_refresh_when_hubspot_says_they_expired(
    hubspot_peer: HubSpotPeer, http: httpx.AsyncClient
) -> None:
    access, refresh = hubspot_peer.issue_oauth_tokens()
    hubspot_peer.expire(access)
    refreshed: list[Credentials] = []
    credentials = OAuth2Credentials(
        access_token=SecretStr(access),
        refresh_token=SecretStr(refresh),
        # What the store believes: still valid, so only HubSpot's answer reveals the expiry.
        expires_at=datetime.now(UTC) + timedelta(minutes=20),
    )
    crm = _open(credentials, http, _context(hubspot_peer, refreshed))
    hubspot_peer.seed("contacts", {"email": "a@example.com"})

    page = await crm.list_contacts(ListQuery())

    assert [c.email for c in page.items] == ["a@example.com"]
    assert len(refreshed) == 1
    new = refreshed[0]
    assert isinstance(new, OAuth2Credentials)
    assert new.access_token.get_secret_value() != access
    assert new.refresh_token is not None
    assert new.expires_at is not None
    assert new.expires_at > datetime.now(UTC) + timedelta(minutes=25)
    assert crm.credentials == new
    [(_, _, _, body)] = hubspot_peer.seen("POST", "/oauth/v1/token")
    form = parse_qs(body.decode())
    assert form["grant_type"] == ["refresh_token"]
    assert form["refresh_token"] == [refresh]


async def test_oauth_tokens_refresh_ahead_of_expiry(
    hubspot_peer: HubSpotPeer, http: httpx.AsyncClient
) -> None:
    access, refresh = hubspot_peer.issue_oauth_tokens()
    refreshed: list[Credentials] = []
    credentials = OAuth2Credentials(
        access_token=SecretStr(access),
        refresh_token=SecretStr(refresh),
        expires_at=datetime.now(UTC) + timedelta(seconds=30),
    )
    crm = _open(credentials, http, _context(hubspot_peer, refreshed))

    await crm.list_companies(ListQuery())

    assert len(refreshed) == 1
    # The old token was never sent: the refresh came first.
    sent = [h["authorization"] for _, _, h, _ in hubspot_peer.seen("GET", "/crm/")]
    assert sent == [f"Bearer {refreshed[0].access_token.get_secret_value()}"]  # type: ignore[attr-defined]


async def test_a_revoked_refresh_token_is_an_auth_failure(
    hubspot_peer: HubSpotPeer, http: httpx.AsyncClient
) -> None:
    access, refresh = hubspot_peer.issue_oauth_tokens()
    hubspot_peer.expire(access)
    credentials = OAuth2Credentials(
        access_token=SecretStr(access), refresh_token=SecretStr(refresh), expires_at=None
    )
    crm = _open(credentials, http, _context(hubspot_peer, []))
    assert await crm.revoke() is True
    assert refresh not in hubspot_peer.refresh_tokens

    with pytest.raises(AuthFailed, match="BAD_REFRESH_TOKEN"):
        await crm.list_contacts(ListQuery())


def test_the_spec_offers_oauth_and_private_app_tokens() -> None:
    spec = SPEC
    assert spec.kind == "crm"
    assert spec.auth_kinds == ("oauth2_authorization_code", "api_key")
    form = spec.form_schema("api_key")
    assert form["properties"]["api_key"]["writeOnly"] is True
    assert form["properties"]["api_key"]["title"] == "Private app access token"
    assert spec.oauth is not None
    assert "crm.objects.contacts.write" in spec.oauth.scopes
    assert spec.auth["api_key"] is PrivateAppToken


async def test_production_requests_go_to_hubspot_in_its_shapes() -> None:
    """No peer and no origin override: the requests the connector sends to HubSpot itself."""
    credentials = OAuth2Credentials(
        access_token=SecretStr("old-access"),
        refresh_token=SecretStr("the-refresh-token"),
        expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    context = ConnectorContext(oauth_client=OAuthClient(CLIENT_ID, SecretStr(CLIENT_SECRET)))
    deal = {
        "id": "9001",
        "properties": {"dealname": "Site", "dealstage": "contractsent", "pipeline": "default"},
        "createdAt": "2026-11-30T10:00:00Z",
        "updatedAt": "2026-11-30T10:00:00Z",
    }
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as vendor:
        token = vendor.post("https://api.hubapi.com/oauth/v1/token").respond(
            200, json={"access_token": "new-access", "refresh_token": "r2", "expires_in": 1800}
        )
        create = vendor.post("https://api.hubapi.com/crm/v3/objects/deals").respond(201, json=deal)
        read = vendor.get("https://api.hubapi.com/crm/v3/objects/deals/9001").respond(
            200, json=deal
        )
        async with connector_client(allow_private=False) as http:
            crm = _open(credentials, http, context)
            await crm.create_deal(
                DealDraft(name="Site", stage_id="contractsent", company_id="77", amount=Decimal(5))
            )

    assert parse_qs(token.calls.last.request.content.decode()) == {
        "grant_type": ["refresh_token"],
        "client_id": [CLIENT_ID],
        "client_secret": [CLIENT_SECRET],
        "refresh_token": ["the-refresh-token"],
    }
    sent = create.calls.last.request
    assert sent.headers["authorization"] == "Bearer new-access"
    assert json.loads(sent.content) == {
        "properties": {
            "dealname": "Site",
            "amount": "5",
            "pipeline": "default",
            "dealstage": "contractsent",
        },
        "associations": [
            {
                "to": {"id": "77"},
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 5}],
            }
        ],
    }
    params = read.calls.last.request.url.params
    assert params["associations"] == "companies,contacts"
    assert "dealstage" in params["properties"].split(",")


async def test_an_unknown_record_is_not_found(crm: CRMPort) -> None:
    with pytest.raises(VendorNotFound):
        await crm.get_contact("4242")
    with pytest.raises(VendorNotFound):
        await crm.get_deal("../owners")  # never reaches the URL path


async def test_a_page_larger_than_the_limit_is_refused_unread(
    hubspot_peer: HubSpotPeer, http: httpx.AsyncClient
) -> None:
    for n in range(100):
        hubspot_peer.seed("contacts", {"email": f"bulk{n}@example.com", "firstname": "x" * 200})
    context = replace(_context(hubspot_peer), max_response_bytes=16 * 1024)
    crm = _open(PrivateAppToken(api_key=SecretStr(PRIVATE_APP_TOKEN)), http, context)

    with pytest.raises(ResponseTooLarge):
        await crm.list_contacts(ListQuery(limit=100))
    assert len((await crm.list_contacts(ListQuery(limit=10))).items) == 10


async def test_answers_carry_hubspots_limit_headers(
    hubspot_peer: HubSpotPeer, http: httpx.AsyncClient
) -> None:
    """What the connector reads on a 429 is what HubSpot sends on every answer."""
    answer = await http.get(
        f"{hubspot_peer.url}/crm/v3/objects/contacts",
        headers={"Authorization": f"Bearer {PRIVATE_APP_TOKEN}"},
    )
    assert answer.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
    assert answer.headers["X-HubSpot-RateLimit-Remaining"] == "189"
    assert answer.headers["X-HubSpot-RateLimit-Secondly"] == "19"
    assert answer.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "999999"


async def _search(
    peer: HubSpotPeer, http: httpx.AsyncClient, kind: str, body: dict[str, object]
) -> httpx.Response:
    return await http.post(
        f"{peer.url}/crm/v3/objects/{kind}/search",
        json=body,
        headers={"Authorization": f"Bearer {PRIVATE_APP_TOKEN}"},
    )


def _where(*filters: tuple[str, str, object]) -> dict[str, object]:
    return {
        "filterGroups": [
            {"filters": [{"propertyName": p, "operator": o, "value": v} for p, o, v in filters]}
        ]
    }


async def test_the_peer_searches_dates_as_instants_and_numbers_as_numbers(
    hubspot_peer: HubSpotPeer, http: httpx.AsyncClient
) -> None:
    """HubSpot takes date-time values in epoch milliseconds or ISO 8601, and compares numbers
    as numbers (as strings, "9" would sort after "10")."""
    early, middle, late = (
        hubspot_peer.seed("contacts", {"email": f"{n}@example.com"}, at=T0 + timedelta(hours=h))
        for n, h in (("early", 0), ("middle", 1), ("late", 2))
    )
    berlin = timezone(timedelta(hours=1))
    between = _where(
        ("lastmodifieddate", "GT", (T0 + timedelta(minutes=30)).astimezone(berlin).isoformat()),
        ("lastmodifieddate", "LTE", _ms(T0 + timedelta(hours=1))),
    )
    answer = await _search(hubspot_peer, http, "contacts", between)
    assert [r["id"] for r in answer.json()["results"]] == [middle["id"]]
    before = await _search(
        hubspot_peer, http, "contacts", _where(("lastmodifieddate", "LT", int(_ms(T0)) + 1))
    )
    assert [r["id"] for r in before.json()["results"]] == [early["id"]]
    after = await _search(
        hubspot_peer, http, "contacts", _where(("lastmodifieddate", "GTE", "2026-11-30T11:00Z"))
    )
    assert [r["id"] for r in after.json()["results"]] == [late["id"]]

    nine, ten, hundred = (
        hubspot_peer.seed("deals", {"dealname": a, "dealstage": "closedwon", "amount": a})["id"]
        for a in ("9", "10", "100")
    )

    async def deals(body: dict[str, object]) -> list[str]:
        answer = await _search(hubspot_peer, http, "deals", body)
        assert answer.status_code == 200, answer.text
        return [r["id"] for r in answer.json()["results"]]

    descending = [{"propertyName": "amount", "direction": "DESCENDING"}]
    assert await deals({**_where(("amount", "GTE", "10")), "sorts": descending}) == [hundred, ten]
    assert await deals(_where(("amount", "LT", 100))) == [nine, ten]
    assert await deals(_where(("amount", "NEQ", 10))) == [nine, hundred]
    assert await deals({"sorts": [{"propertyName": "amount", "direction": "ASCENDING"}]}) == [
        nine,
        ten,
        hundred,
    ]

    unreadable = await _search(
        hubspot_peer, http, "contacts", _where(("lastmodifieddate", "GTE", "soon"))
    )
    assert unreadable.status_code == 400
    assert unreadable.json()["category"] == "VALIDATION_ERROR"


async def test_the_peer_refuses_to_page_a_search_past_its_cap(
    hubspot_peer: HubSpotPeer, http: httpx.AsyncClient
) -> None:
    hubspot_peer.seed("contacts", {"email": "only@example.com"})

    within = await _search(hubspot_peer, http, "contacts", {"after": "9900", "limit": 100})
    past = await _search(hubspot_peer, http, "contacts", {"after": "9950", "limit": 100})

    assert (within.status_code, within.json()["results"]) == (200, [])
    assert past.status_code == 400
    body = past.json()
    assert (body["status"], body["category"]) == ("error", "VALIDATION_ERROR")
    assert {"message", "correlationId"} <= set(body)
    # Search answers carry no rate-limit headers, refusals included.
    assert not any(h.lower().startswith("x-hubspot-ratelimit") for h in past.headers)
    assert not any(h.lower().startswith("x-hubspot-ratelimit") for h in within.headers)
