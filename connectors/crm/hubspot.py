"""HubSpot behind the CRM port: CRM v3 objects over async httpx.

Auth is a private app's access token or an OAuth access token with its refresh token. OAuth
tokens live 30 minutes: the connector refreshes ahead of expiry and once more when HubSpot
answers ``EXPIRED_AUTHENTICATION`` (HubSpot's guidance: a plain 401 is not by itself a reason to
refresh), and hands the new tokens to ``on_refresh`` so the caller can write them back to the
secret store. https://developers.hubspot.com/docs/api/oauth/tokens

Records are ``/crm/v3/objects/{type}``; listings page with ``after``
(https://developers.hubspot.com/docs/api/crm/understanding-the-crm), lookups by e-mail and by
external id use the search endpoint (https://developers.hubspot.com/docs/api/crm/search).
The incremental contact listing a sync reads (:meth:`HubSpotConnector.sync_contacts`) searches
too: contacts with ``lastmodifieddate`` at or after a moment, oldest first; HubSpot's search
answers at most 10,000 results per query, so the listing starts its query again from the last
contact it read before it would page past that.
Activities are HubSpot's engagement objects (notes, calls, emails, meetings, tasks), linked to
records with HubSpot-defined association types
(https://developers.hubspot.com/docs/api/crm/associations/v4).

This platform's ``external_id`` is kept in a custom property, ``bizosaas_external_id``, which the
connector creates on each object type the first time it needs it
(https://developers.hubspot.com/docs/api/crm/properties).

Errors: HubSpot's bodies (``message``, ``category``) give the reason; 429s name their
``policyName``: the ten-second window is retried after the window HubSpot announces in
``X-HubSpot-RateLimit-Interval-Milliseconds`` unless a ``Retry-After`` says otherwise; the daily
limit is reported as ``daily`` with no delay: it resets at midnight in the account's time zone
(``time_zone`` in the account detail :meth:`HubSpotConnector.verify` records), which its callers
wait for (https://developers.hubspot.com/docs/api/usage-details).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field, SecretStr, field_validator

from connectors.crm import (
    Activity,
    ActivityDraft,
    ActivityKind,
    ActivityQuery,
    Company,
    CompanyDraft,
    CompanyUpdate,
    Contact,
    ContactDraft,
    ContactUpdate,
    Deal,
    DealDraft,
    DealUpdate,
    Pipeline,
    PipelineStage,
    RecordRef,
)
from connectors.http import (
    DEFAULT_MAX_RESPONSE_BYTES,
    AuthFailed,
    InvalidCursor,
    RateLimited,
    SchemaMismatch,
    Unsupported,
    VendorNotFound,
    VendorRejected,
    error_for_status,
    json_body,
    parse_as,
    parse_records,
    parse_retry_after,
    send,
    utc,
)
from connectors.ports import (
    AccountInfo,
    ListQuery,
    Page,
    SyncPage,
    SyncQuery,
    decode_cursor,
    encode_cursor,
)
from connectors.registry import (
    ApiKeyCredentials,
    ConnectionSettings,
    ConnectorContext,
    ConnectorSpec,
    Credentials,
    OAuth2Credentials,
    OAuthClient,
    OAuthEndpoints,
    RateLimit,
)

VENDOR = "hubspot"
API_BASE = "https://api.hubapi.com"
AUTHORIZE_URL = "https://app.hubspot.com/oauth/authorize"
SCOPES = (
    "crm.objects.contacts.read",
    "crm.objects.contacts.write",
    "crm.objects.companies.read",
    "crm.objects.companies.write",
    "crm.objects.deals.read",
    "crm.objects.deals.write",
    "crm.schemas.contacts.write",
    "crm.schemas.companies.write",
    "crm.schemas.deals.write",
)
EXTERNAL_ID = "bizosaas_external_id"
# Refresh this long before HubSpot's expiry, so a token never dies mid-request.
REFRESH_MARGIN = 120.0
#: The most results one search query pages through; asking past it is a 400
#: (https://developers.hubspot.com/docs/api/crm/search, "Limitations").
SEARCH_RESULT_CAP = 10_000
# The largest page the search endpoint serves.
SEARCH_PAGE_MAX = 200
# Values one ``IN`` filter is given at most.
_IN_VALUES = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_CONTACT_PROPERTIES = (
    "email", "firstname", "lastname", "phone", "jobtitle", "associatedcompanyid",
    "hubspot_owner_id", EXTERNAL_ID, "createdate", "lastmodifieddate",
)  # fmt: skip
_COMPANY_PROPERTIES = (
    "name", "domain", "phone", "industry", "hubspot_owner_id", EXTERNAL_ID,
    "createdate", "hs_lastmodifieddate",
)  # fmt: skip
_DEAL_PROPERTIES = (
    "dealname", "amount", "deal_currency_code", "pipeline", "dealstage", "closedate",
    "hubspot_owner_id", EXTERNAL_ID, "createdate", "hs_lastmodifieddate",
)  # fmt: skip
_PROPERTY_GROUP = {
    "contacts": "contactinformation",
    "companies": "companyinformation",
    "deals": "dealinformation",
}
# Engagement objects have no default group a custom property fits: ours is created there.
_OWN_GROUP = {"name": "bizosaas", "label": "BizOSaaS"}

# Engagement object per activity kind, with its subject and body properties.
_ACTIVITY_OBJECTS: dict[ActivityKind, tuple[str, str | None, str]] = {
    "note": ("notes", None, "hs_note_body"),
    "call": ("calls", "hs_call_title", "hs_call_body"),
    "email": ("emails", "hs_email_subject", "hs_email_text"),
    "meeting": ("meetings", "hs_meeting_title", "hs_meeting_body"),
    "task": ("tasks", "hs_task_subject", "hs_task_body"),
}
_ACTIVITY_ORDER: tuple[ActivityKind, ...] = ("note", "call", "email", "meeting", "task")
# HubSpot-defined association type ids from an engagement to a contact, company and deal.
_ACTIVITY_ASSOCIATIONS: dict[ActivityKind, dict[str, int]] = {
    "note": {"contact": 202, "company": 190, "deal": 214},
    "call": {"contact": 194, "company": 182, "deal": 206},
    "email": {"contact": 198, "company": 186, "deal": 210},
    "meeting": {"contact": 200, "company": 188, "deal": 212},
    "task": {"contact": 204, "company": 192, "deal": 216},
}
_PRIMARY_CONTACT_TO_COMPANY = 1
_DEAL_TO_CONTACT = 3
_PRIMARY_DEAL_TO_COMPANY = 5


# --- Settings and credentials ---------------------------------------------------------------


class HubSpotSettings(ConnectionSettings):
    """HubSpot has no per-connection settings: the token says which account it is."""


class PrivateAppToken(ApiKeyCredentials):
    """A private app's access token (Settings → Integrations → Private apps): it does not
    expire and cannot be refreshed."""

    api_key: SecretStr = Field(
        min_length=1, title="Private app access token", json_schema_extra={"format": "password"}
    )


HubSpotCredentials = PrivateAppToken | ApiKeyCredentials | OAuth2Credentials
OnRefresh = Callable[[Credentials], Awaitable[None]]


# --- HubSpot's shapes -----------------------------------------------------------------------


class _Association(BaseModel):
    id: str


class _AssociationPage(BaseModel):
    results: list[_Association]


class _Object(BaseModel):
    id: str
    properties: dict[str, str | None]
    createdAt: datetime | None = None
    updatedAt: datetime | None = None
    associations: dict[str, _AssociationPage] | None = None


class _Next(BaseModel):
    after: str


class _Paging(BaseModel):
    next: _Next | None = None


class _ObjectPage(BaseModel):
    results: list[_Object]
    paging: _Paging | None = None


class _RecordPage(BaseModel):
    """A page whose records a sync reads one by one (:func:`parse_records`)."""

    results: list[Any]
    paging: _Paging | None = None


class _Stage(BaseModel):
    id: str
    label: str
    displayOrder: int = 0
    metadata: dict[str, str | None] = {}


class _Pipeline(BaseModel):
    id: str
    label: str
    stages: list[_Stage]


class _Pipelines(BaseModel):
    results: list[_Pipeline]


class _Account(BaseModel):
    portalId: int
    timeZone: str | None = None
    companyCurrency: str | None = None
    uiDomain: str | None = None


class _Token(BaseModel):
    access_token: str
    refresh_token: str
    expires_in: int


# Record properties as the port needs them: validation names HubSpot's property on a mismatch.
class _ContactProperties(BaseModel):
    email: str | None = None
    firstname: str | None = None
    lastname: str | None = None
    phone: str | None = None
    jobtitle: str | None = None
    associatedcompanyid: str | None = None
    hubspot_owner_id: str | None = None
    bizosaas_external_id: str | None = None


class _SyncedContactProperties(_ContactProperties):
    # What the sync listing is ordered and resumed by: a contact without it cannot be placed.
    lastmodifieddate: datetime


class _SyncedContact(BaseModel):
    """A contact as the sync listing reads it; one that does not parse is reported, not
    raised."""

    id: str
    properties: _SyncedContactProperties
    createdAt: datetime | None = None
    updatedAt: datetime | None = None

    @field_validator("properties", mode="before")
    @classmethod
    def _cleared_are_none(cls, value: Any) -> Any:
        return _blank_to_none(value) if isinstance(value, Mapping) else value


class _CompanyProperties(BaseModel):
    # HubSpot allows a company without a name (one made from an e-mail domain, say).
    name: str | None = None
    domain: str | None = None
    phone: str | None = None
    industry: str | None = None
    hubspot_owner_id: str | None = None
    bizosaas_external_id: str | None = None


class _DealProperties(BaseModel):
    dealname: str
    dealstage: str
    amount: Decimal | None = None
    deal_currency_code: str | None = None
    pipeline: str | None = None
    closedate: datetime | None = None
    hubspot_owner_id: str | None = None
    bizosaas_external_id: str | None = None


class _ActivityProperties(BaseModel):
    hs_timestamp: datetime | None = None


def _blank_to_none(properties: Mapping[str, str | None]) -> dict[str, str | None]:
    # HubSpot sends "" for a property that was cleared; the port says None.
    return {key: (value if value != "" else None) for key, value in properties.items()}


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], data: Any, path: str) -> M:
    return parse_as(model, data, vendor=VENDOR, path=path)


def _iso(value: date | datetime) -> str:
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value.isoformat()


def _drop_none(properties: Mapping[str, object]) -> dict[str, str]:
    return {key: str(value) for key, value in properties.items() if value is not None}


def _epoch_ms(value: datetime) -> int:
    """``value`` in epoch milliseconds, as HubSpot compares date-time properties; rounded
    down, so a ``GTE`` filter keeps the instant itself."""
    return (utc(value) - _EPOCH) // timedelta(milliseconds=1)


def _as_contact(
    contact_id: str,
    props: _ContactProperties,
    created_at: datetime | None,
    updated_at: datetime | None,
) -> Contact:
    return Contact(
        id=contact_id,
        email=props.email,
        first_name=props.firstname,
        last_name=props.lastname,
        phone=props.phone,
        job_title=props.jobtitle,
        company_id=props.associatedcompanyid,
        owner_id=props.hubspot_owner_id,
        external_id=props.bizosaas_external_id,
        created_at=created_at,
        updated_at=updated_at,
    )


# --- The connector --------------------------------------------------------------------------


class HubSpotConnector:
    """The CRM port over one HubSpot account."""

    vendor = VENDOR

    def __init__(
        self,
        client: httpx.AsyncClient,
        credentials: HubSpotCredentials,
        *,
        api_base: str = API_BASE,
        oauth_client: OAuthClient | None = None,
        on_refresh: OnRefresh | None = None,
        max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._client = client
        self._auth = credentials
        self._base = api_base.rstrip("/")
        self._oauth_client = oauth_client
        self._on_refresh = on_refresh
        self._max_bytes = max_bytes
        self._ensured: set[str] = set()

    @property
    def credentials(self) -> HubSpotCredentials:
        """The credentials in use now: after a refresh, the new tokens to store."""
        return self._auth

    # -- plumbing

    def _access_token(self) -> str:
        auth = self._auth
        if isinstance(auth, OAuth2Credentials):
            return auth.access_token.get_secret_value()
        return auth.api_key.get_secret_value()

    async def _token(self) -> str:
        auth = self._auth
        if (
            isinstance(auth, OAuth2Credentials)
            and auth.expires_at is not None
            and auth.expires_at.timestamp() - REFRESH_MARGIN <= time.time()
        ):
            await self.refresh()
        return self._access_token()

    async def _send(self, request: httpx.Request) -> httpx.Response:
        return await send(self._client, request, vendor=VENDOR, max_bytes=self._max_bytes)

    async def refresh(self) -> OAuth2Credentials:
        """Exchange the refresh token for new tokens; ``on_refresh`` receives them."""
        auth = self._auth
        if not isinstance(auth, OAuth2Credentials) or auth.refresh_token is None:
            raise AuthFailed("these credentials cannot be refreshed", vendor=VENDOR)
        if self._oauth_client is None:
            raise AuthFailed("no OAuth client is configured for HubSpot", vendor=VENDOR)
        request = self._client.build_request(
            "POST",
            f"{self._base}/oauth/v1/token",
            data={
                "grant_type": "refresh_token",
                "client_id": self._oauth_client.client_id,
                "client_secret": self._oauth_client.client_secret.get_secret_value(),
                "refresh_token": auth.refresh_token.get_secret_value(),
            },
        )
        response = await self._send(request)
        if response.status_code == 400:
            status = _error_body(response).get("status")
            # HubSpot answers 400 for a revoked refresh token or a changed client secret:
            # only a new consent fixes either.
            raise AuthFailed(
                f"{VENDOR} refused to refresh the OAuth token ({status or 'invalid request'})",
                vendor=VENDOR,
                status=400,
            )
        self._raise_for(response)
        token = _validate(_Token, json_body(response, vendor=VENDOR), "$")
        self._auth = auth.model_copy(
            update={
                "access_token": SecretStr(token.access_token),
                "refresh_token": SecretStr(token.refresh_token),
                "expires_at": datetime.now(UTC) + timedelta(seconds=token.expires_in),
            }
        )
        if self._on_refresh is not None:
            await self._on_refresh(self._auth)
        return self._auth

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        allow_404: bool = False,
    ) -> Any:
        for attempt in range(2):
            request = self._client.build_request(
                method,
                f"{self._base}{path}",
                params=params,
                json=body,
                headers={"Authorization": f"Bearer {await self._token()}"},
            )
            response = await self._send(request)
            if (
                response.status_code == 401
                and attempt == 0
                and isinstance(self._auth, OAuth2Credentials)
                and _category(response) == "EXPIRED_AUTHENTICATION"
            ):
                await self.refresh()
                continue
            if allow_404 and response.status_code == 404:
                return None
            self._raise_for(response)
            if response.status_code == 204:
                return None
            return json_body(response, vendor=VENDOR)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        body = _error_body(response)
        message = str(body.get("message") or "") or None
        category = body.get("category") or body.get("errorType")
        if response.status_code == 429:
            policy = str(body.get("policyName") or "")
            raise RateLimited(
                f"{VENDOR} rate limit reached ({policy or 'unnamed policy'})",
                vendor=VENDOR,
                retry_after=_rate_limit_delay(response.headers, policy),
                daily=policy == "DAILY",
            )
        error = error_for_status(
            response, vendor=VENDOR, reason=message, code=str(category) if category else None
        )
        assert error is not None
        raise error

    # -- the connection

    async def verify(self) -> AccountInfo:
        """Reads the account's details, then one contact, so that a token without the CRM
        scopes fails here (403 ``MISSING_SCOPES``) rather than on the first real call.
        https://developers.hubspot.com/docs/api/settings/account-information-api"""
        account = _validate(_Account, await self._call("GET", "/account-info/v3/details"), "$")
        await self._call("GET", "/crm/v3/objects/contacts", params={"limit": 1})
        detail = {"auth": "oauth" if isinstance(self._auth, OAuth2Credentials) else "private_app"}
        if account.timeZone:
            detail["time_zone"] = account.timeZone
        if account.companyCurrency:
            detail["currency"] = account.companyCurrency
        return AccountInfo(
            account_id=str(account.portalId),
            name=account.uiDomain or f"HubSpot account {account.portalId}",
            detail=detail,
        )

    async def revoke(self) -> bool:
        """Deletes the OAuth refresh token; a private app's token is revoked in HubSpot's UI."""
        auth = self._auth
        if not isinstance(auth, OAuth2Credentials) or auth.refresh_token is None:
            return False
        token = auth.refresh_token.get_secret_value()
        request = self._client.build_request(
            "DELETE", f"{self._base}/oauth/v1/refresh-tokens/{quote(token, safe='')}"
        )
        response = await self._send(request)
        if response.status_code not in (204, 404):
            self._raise_for(response)
        return True

    # -- generic object calls

    async def _list(
        self,
        object_type: str,
        query: ListQuery,
        properties: Sequence[str],
        associations: Sequence[str] = (),
    ) -> tuple[list[tuple[str, _Object]], str | None]:
        params: dict[str, str | int] = {"limit": query.limit, "properties": ",".join(properties)}
        if associations:
            params["associations"] = ",".join(associations)
        if query.cursor is not None:
            params["after"] = str(decode_cursor(query.cursor, vendor=VENDOR).get("after", ""))
        data = await self._call("GET", f"/crm/v3/objects/{object_type}", params=params)
        page = _validate(_ObjectPage, data, "$")
        following = page.paging.next.after if page.paging and page.paging.next else None
        items = [(f"$.results[{i}]", item) for i, item in enumerate(page.results)]
        return items, (encode_cursor({"after": following}) if following else None)

    async def _get(
        self, object_type: str, object_id: str, properties: Sequence[str],
        associations: Sequence[str] = (),
    ) -> _Object:  # fmt: skip
        params: dict[str, str | int] = {"properties": ",".join(properties)}
        if associations:
            params["associations"] = ",".join(associations)
        data = await self._call(
            "GET", f"/crm/v3/objects/{object_type}/{_segment(object_id)}", params=params
        )
        return _validate(_Object, data, "$")

    async def _create(
        self,
        object_type: str,
        properties: Mapping[str, object],
        associations: Sequence[tuple[str, int]] = (),
    ) -> _Object:
        body: dict[str, Any] = {"properties": _drop_none(properties)}
        if associations:
            body["associations"] = [
                {
                    "to": {"id": target},
                    "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": t}],
                }
                for target, t in associations
            ]
        data = await self._call("POST", f"/crm/v3/objects/{object_type}", body=body)
        return _validate(_Object, data, "$")

    async def _update(
        self, object_type: str, object_id: str, properties: Mapping[str, object]
    ) -> None:
        await self._call(
            "PATCH",
            f"/crm/v3/objects/{object_type}/{_segment(object_id)}",
            body={"properties": {k: ("" if v is None else str(v)) for k, v in properties.items()}},
        )

    async def _search_one(
        self, object_type: str, property_name: str, value: str, properties: Sequence[str]
    ) -> tuple[str, _Object] | None:
        data = await self._call(
            "POST",
            f"/crm/v3/objects/{object_type}/search",
            body={
                "filterGroups": [
                    {"filters": [{"propertyName": property_name, "operator": "EQ", "value": value}]}
                ],
                "properties": list(properties),
                "limit": 1,
            },
        )
        page = _validate(_ObjectPage, data, "$")
        return ("$.results[0]", page.results[0]) if page.results else None

    async def _has_external_id(self, object_type: str) -> bool:
        """Whether ``object_type`` has the ``bizosaas_external_id`` property."""
        if object_type in self._ensured:
            return True
        found = await self._call(
            "GET", f"/crm/v3/properties/{object_type}/{EXTERNAL_ID}", allow_404=True
        )
        if found is not None:
            self._ensured.add(object_type)
        return found is not None

    async def _property_group(self, object_type: str) -> str:
        """The group the external-id property goes in: the object's default, else ours
        (created once; created by another worker meanwhile is fine)."""
        if object_type in _PROPERTY_GROUP:
            return _PROPERTY_GROUP[object_type]
        try:
            await self._call("POST", f"/crm/v3/properties/{object_type}/groups", body=_OWN_GROUP)
        except VendorRejected as exc:
            if exc.status != 409:
                raise
        return _OWN_GROUP["name"]

    async def _ensure_external_id(self, object_type: str) -> None:
        """Create the ``bizosaas_external_id`` property on ``object_type`` if it is missing:
        only writes create it, so a read-only token can still look records up."""
        if await self._has_external_id(object_type):
            return
        try:
            await self._call(
                "POST",
                f"/crm/v3/properties/{object_type}",
                body={
                    "name": EXTERNAL_ID,
                    "label": "BizOSaaS external id",
                    "type": "string",
                    "fieldType": "text",
                    "groupName": await self._property_group(object_type),
                    # Unique values make HubSpot itself refuse a second record with the same
                    # key, so a create retried without its lookup cannot duplicate.
                    "hasUniqueValue": True,
                },
            )
        except VendorRejected as exc:
            # Another worker created it between our read and our write.
            if exc.status != 409:
                raise
        self._ensured.add(object_type)

    async def _find_external(
        self, object_type: str, external_id: str, properties: Sequence[str]
    ) -> tuple[str, _Object] | None:
        # Without the property, no record was ever created with an external id.
        if not await self._has_external_id(object_type):
            return None
        return await self._search_one(object_type, EXTERNAL_ID, external_id, properties)

    # -- contacts

    def _contact(self, where: str, item: _Object) -> Contact:
        props = _validate(
            _ContactProperties, _blank_to_none(item.properties), f"{where}.properties"
        )
        return _as_contact(item.id, props, item.createdAt, item.updatedAt)

    async def list_contacts(self, query: ListQuery) -> Page[Contact]:
        items, cursor = await self._list("contacts", query, _CONTACT_PROPERTIES)
        return Page(items=[self._contact(w, i) for w, i in items], next_cursor=cursor)

    async def sync_contacts(self, query: SyncQuery) -> SyncPage[Contact]:
        """Contacts by ``lastmodifieddate``, oldest first, through the search API: a ``GTE``
        filter in epoch milliseconds when ``updated_since`` is given, paged with ``after``.

        A search query pages through at most :data:`SEARCH_RESULT_CAP` results; when the next
        page (``after`` + ``limit``) would reach past them, the cursor starts the query again
        from the last contact's ``lastmodifieddate`` (contacts changed in that millisecond come
        again: a sync upserts). More contacts than that changed in one millisecond cannot be
        paged through at all: :class:`~connectors.http.Unsupported`, rather than a listing
        that never ends.
        """
        since, after, limit = self._sync_state(query)
        body: dict[str, Any] = {
            "properties": list(_CONTACT_PROPERTIES),
            "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
            "limit": limit,
        }
        if since is not None:
            body["filterGroups"] = [
                {
                    "filters": [
                        {"propertyName": "lastmodifieddate", "operator": "GTE", "value": str(since)}
                    ]
                }
            ]
        if after is not None:
            body["after"] = after
        data = await self._call("POST", "/crm/v3/objects/contacts/search", body=body)
        page = _validate(_RecordPage, data, "$")
        records, unreadable = parse_records(
            _SyncedContact, page.results, vendor=VENDOR, path="$.results"
        )
        contacts = [
            _as_contact(
                r.id, r.properties, r.createdAt, r.updatedAt or r.properties.lastmodifieddate
            )
            for r in records
        ]
        following = page.paging.next.after if page.paging and page.paging.next else None
        state: dict[str, Any] | None = None
        if following and records:
            if following.isdigit() and int(following) + limit > SEARCH_RESULT_CAP:
                restart = _epoch_ms(records[-1].properties.lastmodifieddate)
                if restart == since:
                    raise Unsupported(
                        f"more than {SEARCH_RESULT_CAP} {VENDOR} contacts changed in the same "
                        "millisecond: the search API cannot page past them",
                        vendor=VENDOR,
                    )
                state = {"since": restart, "after": None, "limit": limit}
            else:
                state = {"since": since, "after": following, "limit": limit}
        return SyncPage(
            items=contacts,
            next_cursor=encode_cursor(state) if state is not None else None,
            unreadable=unreadable,
        )

    def _sync_state(self, query: SyncQuery) -> tuple[int | None, str | None, int]:
        """Where a contact sync listing is: its ``since`` (epoch ms), HubSpot's ``after`` and
        the page size, which the cursor keeps so that the cap is reckoned as HubSpot does."""
        if query.cursor is None:
            since = query.updated_since
            return (_epoch_ms(since) if since is not None else None), None, query.limit
        state = decode_cursor(query.cursor, vendor=VENDOR)
        since, after, limit = state.get("since"), state.get("after"), state.get("limit")
        if (
            not (since is None or type(since) is int)
            or not (after is None or isinstance(after, str))
            or not (type(limit) is int and 1 <= limit <= SEARCH_PAGE_MAX)
        ):
            raise InvalidCursor(f"not a {VENDOR} contact sync cursor", vendor=VENDOR)
        return since, after, limit

    async def get_contact(self, contact_id: str) -> Contact:
        return self._contact("$", await self._get("contacts", contact_id, _CONTACT_PROPERTIES))

    async def create_contact(self, draft: ContactDraft) -> Contact:
        if draft.external_id is not None:
            await self._ensure_external_id("contacts")
        associations = [(draft.company_id, _PRIMARY_CONTACT_TO_COMPANY)] if draft.company_id else []
        created = await self._create(
            "contacts",
            {
                "email": draft.email,
                "firstname": draft.first_name,
                "lastname": draft.last_name,
                "phone": draft.phone,
                "jobtitle": draft.job_title,
                EXTERNAL_ID: draft.external_id,
            },
            associations,
        )
        if associations:
            # The answer to a create lists no associations: read the contact's company back.
            return await self.get_contact(created.id)
        return self._contact("$", created)

    async def update_contact(self, contact_id: str, update: ContactUpdate) -> Contact:
        changes = update.model_dump(exclude_unset=True)
        company_id = changes.pop("company_id", None)
        names = {"first_name": "firstname", "last_name": "lastname", "job_title": "jobtitle"}
        properties = {names.get(k, k): v for k, v in changes.items()}
        if properties:
            await self._update("contacts", contact_id, properties)
        if company_id is not None:
            await self._associate("contacts", contact_id, "companies", company_id)
        return await self.get_contact(contact_id)

    async def _associate(self, from_type: str, from_id: str, to_type: str, to_id: str) -> None:
        await self._call(
            "PUT",
            f"/crm/v4/objects/{from_type}/{_segment(from_id)}/associations/default/"
            f"{to_type}/{_segment(to_id)}",
        )

    async def find_contact_by_email(self, email: str) -> Contact | None:
        found = await self._search_one("contacts", "email", email, _CONTACT_PROPERTIES)
        return self._contact(*found) if found else None

    async def find_contact_by_external_id(self, external_id: str) -> Contact | None:
        found = await self._find_external("contacts", external_id, _CONTACT_PROPERTIES)
        return self._contact(*found) if found else None

    async def find_contacts(
        self, external_ids: Sequence[str], emails: Sequence[str]
    ) -> list[Contact]:
        """One search per hundred values: a filter group each for the external ids and the
        e-mails (ORed), their values in lower case as ``IN`` asks, paged with ``after``."""
        ids = list(external_ids) if await self._has_external_id("contacts") else []
        addresses = [email.lower() for email in emails]
        found: list[Contact] = []
        for start in range(0, max(len(ids), len(addresses)), _IN_VALUES):
            groups = [
                {"filters": [{"propertyName": name, "operator": "IN", "values": chunk}]}
                for name, chunk in (
                    (EXTERNAL_ID, ids[start : start + _IN_VALUES]),
                    ("email", addresses[start : start + _IN_VALUES]),
                )
                if chunk
            ]
            found += await self._search_contacts(groups)
        return found

    async def _search_contacts(self, groups: list[dict[str, Any]]) -> list[Contact]:
        """Every contact the filter groups match, page after page."""
        found: list[Contact] = []
        after: str | None = None
        while True:
            body: dict[str, Any] = {
                "filterGroups": groups,
                "properties": list(_CONTACT_PROPERTIES),
                "limit": SEARCH_PAGE_MAX,
            }
            if after is not None:
                body["after"] = after
            data = await self._call("POST", "/crm/v3/objects/contacts/search", body=body)
            page = _validate(_ObjectPage, data, "$")
            found += [self._contact(f"$.results[{n}]", item) for n, item in enumerate(page.results)]
            if page.paging is None or page.paging.next is None:
                return found
            after = page.paging.next.after

    # -- companies

    def _company(self, where: str, item: _Object) -> Company:
        props = _validate(
            _CompanyProperties, _blank_to_none(item.properties), f"{where}.properties"
        )
        return Company(
            id=item.id,
            name=props.name or props.domain or "",
            domain=props.domain,
            phone=props.phone,
            industry=props.industry,
            owner_id=props.hubspot_owner_id,
            external_id=props.bizosaas_external_id,
            created_at=item.createdAt,
            updated_at=item.updatedAt,
        )

    async def list_companies(self, query: ListQuery) -> Page[Company]:
        items, cursor = await self._list("companies", query, _COMPANY_PROPERTIES)
        return Page(items=[self._company(w, i) for w, i in items], next_cursor=cursor)

    async def get_company(self, company_id: str) -> Company:
        return self._company("$", await self._get("companies", company_id, _COMPANY_PROPERTIES))

    async def create_company(self, draft: CompanyDraft) -> Company:
        if draft.external_id is not None:
            await self._ensure_external_id("companies")
        created = await self._create(
            "companies",
            {
                "name": draft.name,
                "domain": draft.domain,
                "phone": draft.phone,
                "industry": draft.industry,
                EXTERNAL_ID: draft.external_id,
            },
        )
        return self._company("$", created)

    async def update_company(self, company_id: str, update: CompanyUpdate) -> Company:
        changes = update.model_dump(exclude_unset=True)
        if changes:
            await self._update("companies", company_id, changes)
        return await self.get_company(company_id)

    async def find_company_by_external_id(self, external_id: str) -> Company | None:
        found = await self._find_external("companies", external_id, _COMPANY_PROPERTIES)
        return self._company(*found) if found else None

    # -- deals

    async def list_pipelines(self) -> list[Pipeline]:
        data = await self._call("GET", "/crm/v3/pipelines/deals")
        pipelines = _validate(_Pipelines, data, "$")
        result = []
        for p_index, pipeline in enumerate(pipelines.results):
            stages = []
            for s_index, stage in enumerate(pipeline.stages):
                where = f"$.results[{p_index}].stages[{s_index}].metadata"
                stages.append(_stage(stage, where))
            result.append(Pipeline(id=pipeline.id, name=pipeline.label, stages=stages))
        return result

    def _deal(self, where: str, item: _Object) -> Deal:
        props = _validate(_DealProperties, _blank_to_none(item.properties), f"{where}.properties")
        associations = item.associations or {}
        companies = associations.get("companies")
        contacts = associations.get("contacts")
        return Deal(
            id=item.id,
            name=props.dealname,
            amount=props.amount,
            currency=props.deal_currency_code,
            pipeline_id=props.pipeline,
            stage_id=props.dealstage,
            close_date=props.closedate.date() if props.closedate else None,
            company_id=companies.results[0].id if companies and companies.results else None,
            contact_ids=[c.id for c in contacts.results] if contacts else [],
            owner_id=props.hubspot_owner_id,
            external_id=props.bizosaas_external_id,
            created_at=item.createdAt,
            updated_at=item.updatedAt,
        )

    async def list_deals(self, query: ListQuery) -> Page[Deal]:
        items, cursor = await self._list(
            "deals", query, _DEAL_PROPERTIES, associations=("companies", "contacts")
        )
        return Page(items=[self._deal(w, i) for w, i in items], next_cursor=cursor)

    async def get_deal(self, deal_id: str) -> Deal:
        item = await self._get(
            "deals", deal_id, _DEAL_PROPERTIES, associations=("companies", "contacts")
        )
        return self._deal("$", item)

    async def create_deal(self, draft: DealDraft) -> Deal:
        if draft.external_id is not None:
            await self._ensure_external_id("deals")
        associations = [(c, _DEAL_TO_CONTACT) for c in draft.contact_ids]
        if draft.company_id:
            associations.append((draft.company_id, _PRIMARY_DEAL_TO_COMPANY))
        created = await self._create(
            "deals",
            {
                "dealname": draft.name,
                "amount": draft.amount,
                "deal_currency_code": draft.currency,
                "pipeline": draft.pipeline_id or "default",
                "dealstage": draft.stage_id,
                "closedate": _iso(draft.close_date) if draft.close_date else None,
                EXTERNAL_ID: draft.external_id,
            },
            associations,
        )
        return await self.get_deal(created.id)

    async def update_deal(self, deal_id: str, update: DealUpdate) -> Deal:
        changes = update.model_dump(exclude_unset=True)
        names = {
            "name": "dealname",
            "currency": "deal_currency_code",
            "pipeline_id": "pipeline",
            "stage_id": "dealstage",
            "close_date": "closedate",
        }
        properties = {names.get(k, k): v for k, v in changes.items()}
        if isinstance(properties.get("closedate"), date):
            properties["closedate"] = _iso(properties["closedate"])
        if properties:
            await self._update("deals", deal_id, properties)
        return await self.get_deal(deal_id)

    async def find_deal_by_external_id(self, external_id: str) -> Deal | None:
        found = await self._find_external("deals", external_id, ("hs_object_id",))
        return await self.get_deal(found[1].id) if found else None

    # -- activities

    async def create_activity(self, draft: ActivityDraft) -> Activity:
        object_type, subject_property, body_property = _ACTIVITY_OBJECTS[draft.kind]
        types = _ACTIVITY_ASSOCIATIONS[draft.kind]
        properties: dict[str, object] = {
            body_property: draft.body,
            "hs_timestamp": _iso(draft.occurred_at or datetime.now(UTC)),
        }
        if subject_property is not None:
            properties[subject_property] = draft.subject
        if draft.external_id is not None:
            await self._ensure_external_id(object_type)
            properties[EXTERNAL_ID] = draft.external_id
        created = await self._create(
            object_type, properties, [(ref.id, types[ref.kind]) for ref in draft.related]
        )
        return self._activity(draft.kind, "$", created, related=list(draft.related))

    async def list_activities(self, query: ActivityQuery) -> Page[Activity]:
        """Activities kind by kind (notes, then calls, emails, meetings, tasks), each newest
        first; a page holds one kind, so a page may be shorter than ``limit``."""
        state = decode_cursor(query.cursor, vendor=VENDOR) if query.cursor else {}
        related = query.related
        if query.cursor is not None and state.get("related") is not None:
            related = RecordRef.model_validate(state["related"])
        index = int(state.get("kind", 0))
        after = state.get("after")
        while index < len(_ACTIVITY_ORDER):
            kind = _ACTIVITY_ORDER[index]
            object_type, subject_property, body_property = _ACTIVITY_OBJECTS[kind]
            body: dict[str, Any] = {
                "properties": [
                    p for p in ("hs_timestamp", body_property, subject_property, EXTERNAL_ID) if p
                ],
                "sorts": [{"propertyName": "hs_timestamp", "direction": "DESCENDING"}],
                "limit": query.limit,
            }
            if related is not None:
                body["filterGroups"] = [
                    {
                        "filters": [
                            {
                                "propertyName": f"associations.{related.kind}",
                                "operator": "EQ",
                                "value": related.id,
                            }
                        ]
                    }
                ]
            if after:
                body["after"] = after
            data = await self._call("POST", f"/crm/v3/objects/{object_type}/search", body=body)
            page = _validate(_ObjectPage, data, "$")
            following = page.paging.next.after if page.paging and page.paging.next else None
            refs = [related] if related is not None else []
            items = [
                self._activity(kind, f"$.results[{i}]", item, related=refs)
                for i, item in enumerate(page.results)
            ]
            if following:
                next_state: dict[str, Any] | None = {"kind": index, "after": following}
            elif index + 1 < len(_ACTIVITY_ORDER):
                next_state = {"kind": index + 1}
            else:
                next_state = None
            if next_state is not None and related is not None:
                next_state["related"] = related.model_dump()
            if items or next_state is None:
                return Page(
                    items=items, next_cursor=encode_cursor(next_state) if next_state else None
                )
            index, after = index + 1, None
        return Page(items=[])

    def _activity(
        self, kind: ActivityKind, where: str, item: _Object, *, related: list[RecordRef]
    ) -> Activity:
        _, subject_property, body_property = _ACTIVITY_OBJECTS[kind]
        properties = _blank_to_none(item.properties)
        stamp = _validate(_ActivityProperties, properties, f"{where}.properties")
        return Activity(
            id=item.id,
            kind=kind,
            subject=properties.get(subject_property) if subject_property else None,
            body=properties.get(body_property) or "",
            occurred_at=stamp.hs_timestamp,
            related=related,
            external_id=properties.get(EXTERNAL_ID),
        )


def _stage(stage: _Stage, where: str) -> PipelineStage:
    closed = stage.metadata.get("isClosed") == "true"
    raw = stage.metadata.get("probability")
    try:
        probability = float(raw) if raw not in (None, "") else None
    except ValueError:
        raise SchemaMismatch(
            f"{VENDOR} sent a stage probability that is not a number: {where}.probability",
            vendor=VENDOR,
            field=f"{where}.probability",
        ) from None
    return PipelineStage(
        id=stage.id,
        name=stage.label,
        order=stage.displayOrder,
        probability=probability,
        closed=closed,
        won=closed and probability == 1.0,
    )


def _segment(value: str) -> str:
    """An id as one URL path segment: HubSpot ids are digits; anything else is refused here
    rather than letting it change the path."""
    if not value.isdigit():
        raise VendorNotFound(
            f"{VENDOR} ids are numeric: {value[:40]!r}", vendor=VENDOR, reason="invalid id"
        )
    return value


def _error_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _category(response: httpx.Response) -> str | None:
    category = _error_body(response).get("category")
    return str(category) if category else None


def _rate_limit_delay(headers: httpx.Headers, policy: str) -> float | None:
    announced = parse_retry_after(headers)
    if announced is not None:
        return announced
    if policy == "DAILY":
        return None
    if policy == "SECONDLY":
        return 1.0
    interval = headers.get("x-hubspot-ratelimit-interval-milliseconds")
    return int(interval) / 1000 if interval and interval.isdigit() else 10.0


def _open(
    settings: HubSpotSettings,
    credentials: HubSpotCredentials,
    http: httpx.AsyncClient,
    context: ConnectorContext,
) -> HubSpotConnector:
    return HubSpotConnector(
        http,
        credentials,
        api_base=context.vendor_url(API_BASE),
        oauth_client=context.oauth_client,
        on_refresh=context.on_credentials_refreshed,
        max_bytes=context.max_response_bytes,
    )


SPEC = ConnectorSpec(
    id="hubspot",
    kind="crm",
    display_name="HubSpot",
    settings_model=HubSpotSettings,
    auth={"oauth2_authorization_code": OAuth2Credentials, "api_key": PrivateAppToken},
    factory=_open,
    # HubSpot allows 100-190 calls per ten seconds per account, shared by every app.
    rate_limit=RateLimit(requests=80, per_seconds=10, concurrency=4),
    oauth=OAuthEndpoints(
        authorize_url=AUTHORIZE_URL,
        token_url=f"{API_BASE}/oauth/v1/token",
        scopes=SCOPES,
    ),
    description="Contacts, companies, deals and activities in a HubSpot account (CRM v3).",
    docs_url="https://developers.hubspot.com/docs/api/crm/understanding-the-crm",
)

__all__ = ["SPEC", "HubSpotConnector", "HubSpotSettings", "PrivateAppToken"]
