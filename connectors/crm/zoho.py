"""Zoho CRM behind the CRM port: the v5 REST API over async httpx.

Zoho runs separate data centres (US, EU, India, Australia, Japan, Canada, China, Saudi Arabia,
UK). A connection names its data centre's **accounts server**, which issues and refreshes tokens;
each token response names the **API domain** the account lives on (``api_domain``), and every
CRM call goes there (https://www.zoho.com/crm/developer/docs/api/v5/multi-dc.html). The API domain
is kept in the credentials' ``extra`` and accepted only when it is one of Zoho's.

Auth is OAuth 2.0 with a refresh token (``Authorization: Zoho-oauthtoken ...``). Access tokens
live an hour: the connector refreshes ahead of expiry, and once when Zoho answers
``INVALID_TOKEN``; a second ``INVALID_TOKEN`` is an :class:`~connectors.http.AuthFailed`. New
credentials go to ``on_refresh`` so the caller writes them back to the secret store
(https://www.zoho.com/crm/developer/docs/api/v5/refresh.html).

Listings page with ``page_token`` (``info.next_page_token`` / ``info.more_records``; a module with
no records answers 204) (https://www.zoho.com/crm/developer/docs/api/v5/get-records.html).
The incremental contact listing a sync reads (:meth:`ZohoConnector.sync_contacts`) is the same
listing sorted by ``Modified_Time`` and narrowed by the ``If-Modified-Since`` header, which
Zoho answers with 304 when nothing changed
(https://www.zoho.com/crm/developer/docs/api/v8/get-records.html).
Errors are ``{code, details, message, status}``, at the top level or per record under ``data``
(https://www.zoho.com/crm/developer/docs/api/v5/status-codes.html).

Activities are Zoho's notes: one parent record each
(https://www.zoho.com/crm/developer/docs/api/v5/create-notes.html); calls, meetings, tasks and
e-mails are refused as :class:`~connectors.http.Unsupported`. A deal links one contact
(``Contact_Name``). This platform's ``external_id`` is kept in a custom text field,
``BizOSaaS_External_Id``, created on a module the first time it is needed
(https://www.zoho.com/crm/developer/docs/api/v6/create-custom-field.html).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, Field, SecretStr

from connectors.crm import (
    Activity,
    ActivityDraft,
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
    ConnectionSettings,
    ConnectorContext,
    ConnectorSpec,
    Credentials,
    OAuth2Credentials,
    OAuthClient,
    OAuthEndpoints,
    RateLimit,
)

VENDOR = "zoho"
API_VERSION = "v5"
EXTERNAL_ID = "BizOSaaS_External_Id"
EXTERNAL_ID_LABEL = "BizOSaaS External Id"
# Refresh this long before Zoho's expiry, so a token never dies mid-request.
REFRESH_MARGIN = 120.0
SCOPES = (
    "ZohoCRM.modules.contacts.ALL",
    "ZohoCRM.modules.accounts.ALL",
    "ZohoCRM.modules.deals.ALL",
    "ZohoCRM.modules.notes.ALL",
    "ZohoCRM.settings.fields.ALL",
    "ZohoCRM.org.READ",
)

#: Each data centre's accounts server and API domain.
DATA_CENTRES: dict[str, tuple[str, str]] = {
    "us": ("https://accounts.zoho.com", "https://www.zohoapis.com"),
    "eu": ("https://accounts.zoho.eu", "https://www.zohoapis.eu"),
    "in": ("https://accounts.zoho.in", "https://www.zohoapis.in"),
    "au": ("https://accounts.zoho.com.au", "https://www.zohoapis.com.au"),
    "jp": ("https://accounts.zoho.jp", "https://www.zohoapis.jp"),
    "ca": ("https://accounts.zohocloud.ca", "https://www.zohoapis.ca"),
    "cn": ("https://accounts.zoho.com.cn", "https://www.zohoapis.com.cn"),
    "sa": ("https://accounts.zoho.sa", "https://www.zohoapis.sa"),
    "uk": ("https://accounts.zoho.uk", "https://www.zohoapis.uk"),
}
AccountsServer = Literal[
    "https://accounts.zoho.com",
    "https://accounts.zoho.eu",
    "https://accounts.zoho.in",
    "https://accounts.zoho.com.au",
    "https://accounts.zoho.jp",
    "https://accounts.zohocloud.ca",
    "https://accounts.zoho.com.cn",
    "https://accounts.zoho.sa",
    "https://accounts.zoho.uk",
]
_API_DOMAINS = frozenset(api for _, api in DATA_CENTRES.values())

_CONTACT_FIELDS = (
    "First_Name", "Last_Name", "Email", "Phone", "Title", "Account_Name", "Owner",
    EXTERNAL_ID, "Created_Time", "Modified_Time",
)  # fmt: skip
_ACCOUNT_FIELDS = (
    "Account_Name", "Website", "Phone", "Industry", "Owner", EXTERNAL_ID,
    "Created_Time", "Modified_Time",
)  # fmt: skip
_DEAL_FIELDS = (
    "Deal_Name", "Amount", "Currency", "Pipeline", "Stage", "Closing_Date", "Account_Name",
    "Contact_Name", "Owner", EXTERNAL_ID, "Created_Time", "Modified_Time",
)  # fmt: skip
_NOTE_FIELDS = ("Note_Title", "Note_Content", "Parent_Id", "Created_Time")
_MODULE_OF_REF = {"contact": "Contacts", "company": "Accounts", "deal": "Deals"}
_REF_OF_MODULE = {module: kind for kind, module in _MODULE_OF_REF.items()}


# --- Settings and credentials ---------------------------------------------------------------


class ZohoSettings(ConnectionSettings):
    """Which Zoho data centre the organisation lives in (the domain of its Zoho login page)."""

    accounts_server: AccountsServer = Field(
        default="https://accounts.zoho.com",
        title="Zoho data centre",
        description="The accounts server of the data centre: accounts.zoho.com (US), "
        ".eu, .in, .com.au, .jp, zohocloud.ca, .com.cn, .sa or .uk",
    )


OnRefresh = Callable[[Credentials], Awaitable[None]]


# --- Zoho's shapes --------------------------------------------------------------------------


class _Lookup(BaseModel):
    id: str
    name: str | None = None


class _Info(BaseModel):
    more_records: bool = False
    next_page_token: str | None = None


class _Records(BaseModel):
    data: list[dict[str, Any]]
    info: _Info | None = None


class _ContactRecord(BaseModel):
    id: str
    First_Name: str | None = None
    Last_Name: str | None = None
    Email: str | None = None
    Phone: str | None = None
    Title: str | None = None
    Account_Name: _Lookup | None = None
    Owner: _Lookup | None = None
    BizOSaaS_External_Id: str | None = None
    Created_Time: datetime | None = None
    Modified_Time: datetime | None = None


class _SyncedContact(_ContactRecord):
    # What the sync listing is ordered by: a contact without it cannot be placed.
    Modified_Time: datetime


class _AccountRecord(BaseModel):
    id: str
    Account_Name: str
    Website: str | None = None
    Phone: str | None = None
    Industry: str | None = None
    Owner: _Lookup | None = None
    BizOSaaS_External_Id: str | None = None
    Created_Time: datetime | None = None
    Modified_Time: datetime | None = None


class _DealRecord(BaseModel):
    id: str
    Deal_Name: str
    Stage: str
    Amount: Decimal | None = None
    Currency: str | None = None
    Pipeline: str | _Lookup | None = None
    Closing_Date: date | None = None
    Account_Name: _Lookup | None = None
    Contact_Name: _Lookup | None = None
    Owner: _Lookup | None = None
    BizOSaaS_External_Id: str | None = None
    Created_Time: datetime | None = None
    Modified_Time: datetime | None = None


class _Module(BaseModel):
    api_name: str


class _Parent(BaseModel):
    id: str
    module: _Module | None = None


class _NoteRecord(BaseModel):
    id: str
    Note_Title: str | None = None
    Note_Content: str | None = None
    Parent_Id: _Parent | None = None
    Created_Time: datetime | None = None


class _PickListValue(BaseModel):
    actual_value: str
    display_value: str
    sequence_number: int = 0
    forecast_type: str | None = None
    probability: float | None = None


class _Field(BaseModel):
    api_name: str
    pick_list_values: list[_PickListValue] = []


class _Fields(BaseModel):
    fields: list[_Field]


class _Saved(BaseModel):
    id: str


class _Outcome(BaseModel):
    code: str
    status: str
    message: str = ""
    details: dict[str, Any] = {}


class _Outcomes(BaseModel):
    data: list[_Outcome] = Field(min_length=1)


class _Token(BaseModel):
    access_token: str
    expires_in: int
    api_domain: str


class _Org(BaseModel):
    id: str
    company_name: str | None = None
    time_zone: str | None = None


class _Orgs(BaseModel):
    org: list[_Org] = Field(min_length=1)


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], data: Any, path: str) -> M:
    return parse_as(model, data, vendor=VENDOR, path=path)


def _modified_since(value: datetime) -> str:
    """The ``If-Modified-Since`` value (ISO 8601 with its offset) that covers changes at or
    after ``value``: Zoho returns records modified after the moment, to the second."""
    moment = utc(value).replace(microsecond=0) - timedelta(seconds=1)
    return moment.isoformat()


def _as_contact(record: _ContactRecord) -> Contact:
    return Contact(
        id=record.id,
        email=record.Email,
        first_name=record.First_Name,
        last_name=record.Last_Name,
        phone=record.Phone,
        job_title=record.Title,
        company_id=record.Account_Name.id if record.Account_Name else None,
        owner_id=record.Owner.id if record.Owner else None,
        external_id=record.BizOSaaS_External_Id,
        created_at=record.Created_Time,
        updated_at=record.Modified_Time,
    )


def _criteria_value(value: str) -> str:
    # Zoho's search criteria treat parentheses and commas as syntax unless escaped.
    return "".join("\\" + c if c in "(),\\" else c for c in value)


# --- The connector --------------------------------------------------------------------------


class ZohoConnector:
    """The CRM port over one Zoho CRM organisation."""

    vendor = VENDOR

    def __init__(
        self,
        client: httpx.AsyncClient,
        credentials: OAuth2Credentials,
        *,
        accounts_server: str,
        oauth_client: OAuthClient | None,
        on_refresh: OnRefresh | None = None,
        vendor_url: Callable[[str], str] = lambda url: url,
        max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._client = client
        self._auth = credentials
        self._accounts = accounts_server.rstrip("/")
        self._oauth_client = oauth_client
        self._on_refresh = on_refresh
        self._vendor_url = vendor_url
        self._max_bytes = max_bytes
        self._ensured: set[str] = set()

    @property
    def credentials(self) -> OAuth2Credentials:
        """The credentials in use now: after a refresh, the new access token to store."""
        return self._auth

    # -- tokens

    def _api_domain(self) -> str | None:
        domain = self._auth.extra.get("api_domain")
        if domain is None:
            return None
        if domain.rstrip("/") not in _API_DOMAINS:
            raise SchemaMismatch(
                f"{VENDOR} named an API domain that is not one of its data centres: {domain}",
                vendor=VENDOR,
                field="$.api_domain",
            )
        return self._vendor_url(domain.rstrip("/"))

    def _expired(self) -> bool:
        expires_at = self._auth.expires_at
        return expires_at is not None and expires_at.timestamp() - REFRESH_MARGIN <= time.time()

    async def refresh(self) -> OAuth2Credentials:
        """A new access token (and API domain) from the refresh token; ``on_refresh`` gets the
        new credentials."""
        refresh_token = self._auth.refresh_token
        if refresh_token is None:
            raise AuthFailed("no refresh token: connect Zoho again", vendor=VENDOR)
        if self._oauth_client is None:
            raise AuthFailed("no OAuth client is configured for Zoho", vendor=VENDOR)
        request = self._client.build_request(
            "POST",
            self._vendor_url(f"{self._accounts}/oauth/v2/token"),
            # A form body rather than Zoho's documented query string: secrets stay out of
            # URLs, which proxies and access logs record.
            data={
                "grant_type": "refresh_token",
                "client_id": self._oauth_client.client_id,
                "client_secret": self._oauth_client.client_secret.get_secret_value(),
                "refresh_token": refresh_token.get_secret_value(),
            },
        )
        response = await self._send(request)
        body = _json_or_none(response)
        # Zoho reports token errors in the body, often with status 200.
        if isinstance(body, dict) and "error" in body:
            error = str(body["error"])
            described = str(body.get("error_description") or "")
            if "too many requests" in described.lower():
                raise RateLimited(
                    f"{VENDOR} is limiting token refreshes: {described}",
                    vendor=VENDOR,
                    status=response.status_code,
                    retry_after=60.0,
                )
            raise AuthFailed(
                f"{VENDOR} refused to refresh the token ({error})",
                vendor=VENDOR,
                status=response.status_code,
            )
        self._raise_for(response, body)
        token = _validate(_Token, body, "$")
        self._auth = self._auth.model_copy(
            update={
                "access_token": SecretStr(token.access_token),
                "expires_at": datetime.now(UTC) + timedelta(seconds=token.expires_in),
                "extra": {**self._auth.extra, "api_domain": token.api_domain},
            }
        )
        self._api_domain()  # refuse a domain that is not Zoho's before anything is sent there
        if self._on_refresh is not None:
            await self._on_refresh(self._auth)
        return self._auth

    async def _send(self, request: httpx.Request) -> httpx.Response:
        return await send(self._client, request, vendor=VENDOR, max_bytes=self._max_bytes)

    # -- calls

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        version: str = API_VERSION,
    ) -> Any:
        """One API call; None for Zoho's 204 (nothing found) and 304 (nothing modified since
        ``If-Modified-Since``)."""
        for attempt in range(2):
            if self._api_domain() is None or self._expired():
                await self.refresh()
            domain = self._api_domain()
            token = self._auth.access_token.get_secret_value()
            request = self._client.build_request(
                method,
                f"{domain}/crm/{version}{path}",
                params=params,
                json=body,
                headers={**(headers or {}), "Authorization": f"Zoho-oauthtoken {token}"},
            )
            response = await self._send(request)
            if response.status_code in (204, 304):
                return None
            if response.status_code >= 400:
                # An error page need not be JSON (a proxy's 502, say): its status decides.
                data = _json_or_none(response)
            else:
                data = json_body(response, vendor=VENDOR)
            if (
                response.status_code == 401
                and attempt == 0
                and isinstance(data, dict)
                and data.get("code") == "INVALID_TOKEN"
            ):
                await self.refresh()
                continue
            self._raise_for(response, data)
            return data
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for(self, response: httpx.Response, body: Any) -> None:
        if response.status_code < 400:
            return
        error = _first_error(body)
        reason, code = None, None
        if error is not None:
            reason = str(error.get("message") or "")
            details = error.get("details")
            if isinstance(details, dict) and details.get("api_name"):
                reason = f"{reason} ({details['api_name']})"
            code = str(error.get("code")) if error.get("code") else None
        typed = error_for_status(response, vendor=VENDOR, reason=reason, code=code)
        assert typed is not None
        if isinstance(typed, VendorRejected) and error is not None:
            details = error.get("details")
            typed.data = details if isinstance(details, dict) else {}
        raise typed

    async def _list(
        self, path: str, fields: Sequence[str], query: ListQuery
    ) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
        token = None
        if query.cursor is not None:
            token = decode_cursor(query.cursor, vendor=VENDOR).get("page_token")
            if not isinstance(token, str):
                raise SchemaMismatch("the cursor lacks its page token", vendor=VENDOR)
        params: dict[str, str | int] = {"fields": ",".join(fields), "per_page": query.limit}
        records, following = await self._page(path, params, token)
        items = [(f"$.data[{i}]", record) for i, record in enumerate(records)]
        return items, (encode_cursor({"page_token": following}) if following else None)

    async def _page(
        self,
        path: str,
        params: Mapping[str, str | int],
        page_token: str | None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of a listing: its records and the next page's token (None: the last)."""
        if page_token is not None:
            params = {**params, "page_token": page_token}
        data = await self._call("GET", path, params=params, headers=headers)
        if data is None:
            return [], None
        page = _validate(_Records, data, "$")
        following = page.info.next_page_token if page.info and page.info.more_records else None
        if page.info and page.info.more_records and not following:
            raise SchemaMismatch(
                f"{VENDOR} said more records follow but sent no page token",
                vendor=VENDOR,
                field="$.info.next_page_token",
            )
        return page.data, following

    async def _get(self, module: str, record_id: str) -> tuple[str, dict[str, Any]]:
        data = await self._call("GET", f"/{module}/{_segment(record_id)}")
        if data is None:
            # Zoho answers 204 for an id it does not have.
            raise VendorNotFound(
                f"{VENDOR} has no {module} record {record_id}",
                vendor=VENDOR,
                status=404,
                reason="record not found",
                code="NOT_FOUND",
            )
        page = _validate(_Records, data, "$")
        if not page.data:
            raise SchemaMismatch(f"{VENDOR} sent no record", vendor=VENDOR, field="$.data")
        return "$.data[0]", page.data[0]

    async def _save(self, method: str, path: str, record: Mapping[str, Any]) -> str:
        """Create (POST) or update (PUT) one record; returns its id."""
        # An empty trigger list: Zoho would otherwise run the org's workflow rules, approvals
        # and blueprints on a record this platform writes.
        data = await self._call(method, path, body={"data": [dict(record)], "trigger": []})
        outcome = _validate(_Outcomes, data, "$").data[0]
        if outcome.status != "success":
            raise VendorRejected(
                f"{VENDOR} refused the record: {outcome.message}",
                vendor=VENDOR,
                reason=outcome.message,
                code=outcome.code,
                data=outcome.details,
            )
        return _validate(_Saved, outcome.details, "$.data[0].details").id

    async def _search(
        self, module: str, params: Mapping[str, str], fields: Sequence[str]
    ) -> tuple[str, dict[str, Any]] | None:
        data = await self._call(
            "GET",
            f"/{module}/search",
            params={**params, "fields": ",".join(fields), "per_page": 1},
        )
        if data is None:
            return None
        page = _validate(_Records, data, "$")
        return ("$.data[0]", page.data[0]) if page.data else None

    async def _has_external_id(self, module: str) -> bool:
        """Whether ``module`` has the ``BizOSaaS_External_Id`` field."""
        if module in self._ensured:
            return True
        data = await self._call("GET", "/settings/fields", params={"module": module})
        if any(f.api_name == EXTERNAL_ID for f in _validate(_Fields, data, "$").fields):
            self._ensured.add(module)
            return True
        return False

    async def _ensure_external_id(self, module: str) -> None:
        """Create the ``BizOSaaS_External_Id`` field on ``module`` if it is missing: only
        writes create it, so a token without settings scopes can still look records up."""
        if await self._has_external_id(module):
            return
        try:
            await self._call(
                "POST",
                "/settings/fields",
                params={"module": module},
                body={
                    "fields": [
                        {"field_label": EXTERNAL_ID_LABEL, "data_type": "text", "length": 100}
                    ]
                },
                version="v6",
            )
        except VendorRejected as exc:
            # Another worker created it between our read and our write.
            if exc.code != "DUPLICATE_DATA":
                raise
        self._ensured.add(module)

    async def _find_external(
        self, module: str, external_id: str, fields: Sequence[str]
    ) -> tuple[str, dict[str, Any]] | None:
        # Without the field, no record was ever created with an external id.
        if not await self._has_external_id(module):
            return None
        return await self._search(
            module, {"criteria": f"({EXTERNAL_ID}:equals:{_criteria_value(external_id)})"}, fields
        )

    # -- the connection

    async def verify(self) -> AccountInfo:
        """Reads the organisation (``GET /org``): any valid token may."""
        data = await self._call("GET", "/org")
        org = _validate(_Orgs, data, "$").org[0]
        detail = {"api_domain": self._auth.extra.get("api_domain", "")}
        if org.time_zone:
            detail["time_zone"] = org.time_zone
        return AccountInfo(account_id=org.id, name=org.company_name or org.id, detail=detail)

    async def revoke(self) -> bool:
        """Revokes the refresh token at the accounts server (its access tokens die with it)."""
        refresh_token = self._auth.refresh_token
        if refresh_token is None:
            return False
        request = self._client.build_request(
            "POST",
            self._vendor_url(f"{self._accounts}/oauth/v2/token/revoke"),
            data={"token": refresh_token.get_secret_value()},
        )
        response = await self._send(request)
        self._raise_for(response, _json_or_none(response))
        return True

    # -- contacts

    def _contact(self, where: str, data: Mapping[str, Any]) -> Contact:
        return _as_contact(_validate(_ContactRecord, data, where))

    async def list_contacts(self, query: ListQuery) -> Page[Contact]:
        items, cursor = await self._list("/Contacts", _CONTACT_FIELDS, query)
        return Page(items=[self._contact(w, r) for w, r in items], next_cursor=cursor)

    async def sync_contacts(self, query: SyncQuery) -> SyncPage[Contact]:
        """Contacts by ``Modified_Time``, oldest first (``sort_by=Modified_Time``,
        ``sort_order=asc``), paged by ``page_token``; with ``updated_since``, only those Zoho
        reports modified since then (the ``If-Modified-Since`` header, sent with every page;
        Zoho answers 304 when there are none)."""
        since: str | None = None
        token: str | None = None
        if query.cursor is not None:
            state = decode_cursor(query.cursor, vendor=VENDOR)
            since, token = state.get("since"), state.get("page_token")
            # A sync cursor names its moment (null for all): a listing's cursor does not.
            if (
                "since" not in state
                or not (since is None or isinstance(since, str))
                or not isinstance(token, str)
            ):
                raise InvalidCursor(f"not a {VENDOR} contact sync cursor", vendor=VENDOR)
        elif query.updated_since is not None:
            since = _modified_since(query.updated_since)
        params: dict[str, str | int] = {
            "fields": ",".join(_CONTACT_FIELDS),
            "per_page": query.limit,
            "sort_by": "Modified_Time",
            "sort_order": "asc",
        }
        headers = {"If-Modified-Since": since} if since is not None else None
        records, following = await self._page("/Contacts", params, token, headers)
        parsed, unreadable = parse_records(_SyncedContact, records, vendor=VENDOR, path="$.data")
        cursor = encode_cursor({"page_token": following, "since": since}) if following else None
        return SyncPage(
            items=[_as_contact(c) for c in parsed], next_cursor=cursor, unreadable=unreadable
        )

    async def get_contact(self, contact_id: str) -> Contact:
        return self._contact(*await self._get("Contacts", contact_id))

    async def create_contact(self, draft: ContactDraft) -> Contact:
        if draft.external_id is not None:
            await self._ensure_external_id("Contacts")
        record = _contact_fields(draft.model_dump(exclude_none=True))
        return await self.get_contact(await self._save("POST", "/Contacts", record))

    async def update_contact(self, contact_id: str, update: ContactUpdate) -> Contact:
        record = _contact_fields(update.model_dump(exclude_unset=True))
        if record:
            await self._save("PUT", f"/Contacts/{_segment(contact_id)}", record)
        return await self.get_contact(contact_id)

    async def find_contact_by_email(self, email: str) -> Contact | None:
        found = await self._search("Contacts", {"email": email}, _CONTACT_FIELDS)
        return self._contact(*found) if found else None

    async def find_contact_by_external_id(self, external_id: str) -> Contact | None:
        found = await self._find_external("Contacts", external_id, _CONTACT_FIELDS)
        return self._contact(*found) if found else None

    async def find_contacts(
        self, external_ids: Sequence[str], emails: Sequence[str]
    ) -> list[Contact]:
        """One search per value (each is a criteria search of its own here)."""
        found: dict[str, Contact] = {}
        for external_id in external_ids:
            if (contact := await self.find_contact_by_external_id(external_id)) is not None:
                found[contact.id] = contact
        for email in emails:
            if (contact := await self.find_contact_by_email(email)) is not None:
                found[contact.id] = contact
        return list(found.values())

    # -- companies (Zoho's accounts)

    def _company(self, where: str, data: Mapping[str, Any]) -> Company:
        record = _validate(_AccountRecord, data, where)
        return Company(
            id=record.id,
            name=record.Account_Name,
            domain=record.Website,
            phone=record.Phone,
            industry=record.Industry,
            owner_id=record.Owner.id if record.Owner else None,
            external_id=record.BizOSaaS_External_Id,
            created_at=record.Created_Time,
            updated_at=record.Modified_Time,
        )

    async def list_companies(self, query: ListQuery) -> Page[Company]:
        items, cursor = await self._list("/Accounts", _ACCOUNT_FIELDS, query)
        return Page(items=[self._company(w, r) for w, r in items], next_cursor=cursor)

    async def get_company(self, company_id: str) -> Company:
        return self._company(*await self._get("Accounts", company_id))

    async def create_company(self, draft: CompanyDraft) -> Company:
        if draft.external_id is not None:
            await self._ensure_external_id("Accounts")
        record = _account_fields(draft.model_dump(exclude_none=True))
        return await self.get_company(await self._save("POST", "/Accounts", record))

    async def update_company(self, company_id: str, update: CompanyUpdate) -> Company:
        record = _account_fields(update.model_dump(exclude_unset=True))
        if record:
            await self._save("PUT", f"/Accounts/{_segment(company_id)}", record)
        return await self.get_company(company_id)

    async def find_company_by_external_id(self, external_id: str) -> Company | None:
        found = await self._find_external("Accounts", external_id, _ACCOUNT_FIELDS)
        return self._company(*found) if found else None

    # -- deals

    async def list_pipelines(self) -> list[Pipeline]:
        """One pipeline, ``standard``: the stages of the Deals module's ``Stage`` field."""
        data = await self._call("GET", "/settings/fields", params={"module": "Deals"})
        fields = _validate(_Fields, data, "$")
        stage_field = next((f for f in fields.fields if f.api_name == "Stage"), None)
        if stage_field is None:
            raise SchemaMismatch(
                f"{VENDOR} lists no Stage field for deals", vendor=VENDOR, field="$.fields"
            )
        stages = []
        for value in sorted(stage_field.pick_list_values, key=lambda v: v.sequence_number):
            forecast = (value.forecast_type or "").lower()
            closed = forecast.startswith("closed") or value.actual_value.lower().startswith(
                "closed"
            )
            won = forecast == "closed won" or value.actual_value.lower() == "closed won"
            stages.append(
                PipelineStage(
                    id=value.actual_value,
                    name=value.display_value,
                    order=value.sequence_number,
                    probability=value.probability / 100 if value.probability is not None else None,
                    closed=closed,
                    won=won,
                )
            )
        return [Pipeline(id="standard", name="Standard", stages=stages)]

    def _deal(self, where: str, data: Mapping[str, Any]) -> Deal:
        record = _validate(_DealRecord, data, where)
        pipeline = record.Pipeline
        return Deal(
            id=record.id,
            name=record.Deal_Name,
            amount=record.Amount,
            currency=record.Currency,
            pipeline_id=(pipeline.name if isinstance(pipeline, _Lookup) else pipeline)
            or "standard",
            stage_id=record.Stage,
            close_date=record.Closing_Date,
            company_id=record.Account_Name.id if record.Account_Name else None,
            contact_ids=[record.Contact_Name.id] if record.Contact_Name else [],
            owner_id=record.Owner.id if record.Owner else None,
            external_id=record.BizOSaaS_External_Id,
            created_at=record.Created_Time,
            updated_at=record.Modified_Time,
        )

    async def list_deals(self, query: ListQuery) -> Page[Deal]:
        items, cursor = await self._list("/Deals", _DEAL_FIELDS, query)
        return Page(items=[self._deal(w, r) for w, r in items], next_cursor=cursor)

    async def get_deal(self, deal_id: str) -> Deal:
        return self._deal(*await self._get("Deals", deal_id))

    async def create_deal(self, draft: DealDraft) -> Deal:
        if len(draft.contact_ids) > 1:
            raise Unsupported("a Zoho deal links one contact", vendor=VENDOR)
        if draft.external_id is not None:
            await self._ensure_external_id("Deals")
        record = _deal_fields(draft.model_dump(exclude_none=True))
        return await self.get_deal(await self._save("POST", "/Deals", record))

    async def update_deal(self, deal_id: str, update: DealUpdate) -> Deal:
        record = _deal_fields(update.model_dump(exclude_unset=True))
        if record:
            await self._save("PUT", f"/Deals/{_segment(deal_id)}", record)
        return await self.get_deal(deal_id)

    async def find_deal_by_external_id(self, external_id: str) -> Deal | None:
        found = await self._find_external("Deals", external_id, _DEAL_FIELDS)
        return self._deal(*found) if found else None

    # -- activities (notes)

    def _note(self, where: str, data: Mapping[str, Any]) -> Activity:
        record = _validate(_NoteRecord, data, where)
        related = []
        parent = record.Parent_Id
        if parent is not None and parent.module is not None:
            kind = _REF_OF_MODULE.get(parent.module.api_name)
            if kind is not None:
                related.append(RecordRef.model_validate({"kind": kind, "id": parent.id}))
        return Activity(
            id=record.id,
            kind="note",
            subject=record.Note_Title,
            body=record.Note_Content or "",
            occurred_at=record.Created_Time,
            related=related,
        )

    async def list_activities(self, query: ActivityQuery) -> Page[Activity]:
        """A record's notes (its ``Notes`` related list), or the organisation's notes."""
        related = query.related
        if query.cursor is not None:
            state = decode_cursor(query.cursor, vendor=VENDOR)
            related = RecordRef.model_validate(state["related"]) if state.get("related") else None
        path = (
            f"/{_MODULE_OF_REF[related.kind]}/{_segment(related.id)}/Notes"
            if related is not None
            else "/Notes"
        )
        items, cursor = await self._list(path, _NOTE_FIELDS, query)
        if cursor is not None and related is not None:
            state = decode_cursor(cursor, vendor=VENDOR) | {"related": related.model_dump()}
            cursor = encode_cursor(state)
        return Page(items=[self._note(w, r) for w, r in items], next_cursor=cursor)

    async def create_activity(self, draft: ActivityDraft) -> Activity:
        if draft.kind != "note":
            raise Unsupported(f"Zoho activities here are notes, not {draft.kind}s", vendor=VENDOR)
        if len(draft.related) != 1:
            raise Unsupported("a Zoho note belongs to exactly one record", vendor=VENDOR)
        parent = draft.related[0]
        note_id = await self._save(
            "POST",
            "/Notes",
            {
                "Note_Title": draft.subject,
                "Note_Content": draft.body,
                "Parent_Id": {
                    "module": {"api_name": _MODULE_OF_REF[parent.kind]},
                    "id": parent.id,
                },
            },
        )
        return self._note(*await self._get("Notes", note_id))


def _renamed(values: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    return {names[key]: value for key, value in values.items() if key in names}


def _contact_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    record = _renamed(
        values,
        {
            "email": "Email",
            "first_name": "First_Name",
            "last_name": "Last_Name",
            "phone": "Phone",
            "job_title": "Title",
            "external_id": EXTERNAL_ID,
        },
    )
    if values.get("company_id") is not None:
        record["Account_Name"] = {"id": values["company_id"]}
    return record


def _account_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    return _renamed(
        values,
        {
            "name": "Account_Name",
            "domain": "Website",
            "phone": "Phone",
            "industry": "Industry",
            "external_id": EXTERNAL_ID,
        },
    )


def _deal_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    record = _renamed(
        values,
        {
            "name": "Deal_Name",
            "currency": "Currency",
            "stage_id": "Stage",
            "external_id": EXTERNAL_ID,
        },
    )
    if "amount" in values:
        record["Amount"] = None if values["amount"] is None else float(values["amount"])
    if "close_date" in values:
        close = values["close_date"]
        record["Closing_Date"] = close.isoformat() if close is not None else None
    if values.get("company_id") is not None:
        record["Account_Name"] = {"id": values["company_id"]}
    if values.get("contact_ids"):
        record["Contact_Name"] = {"id": values["contact_ids"][0]}
    return record


def _segment(value: str) -> str:
    """An id as one URL path segment: Zoho ids are digits; anything else is refused here
    rather than letting it change the path."""
    if not value.isdigit():
        raise VendorNotFound(
            f"{VENDOR} ids are numeric: {value[:40]!r}", vendor=VENDOR, reason="invalid id"
        )
    return value


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _first_error(body: Any) -> Mapping[str, Any] | None:
    if not isinstance(body, dict):
        return None
    if "code" in body:
        return body
    data = body.get("data")
    if isinstance(data, list) and data and isinstance(data[0], dict):
        first: Mapping[str, Any] = data[0]
        return first
    return None


def _open(
    settings: ZohoSettings,
    credentials: OAuth2Credentials,
    http: httpx.AsyncClient,
    context: ConnectorContext,
) -> ZohoConnector:
    return ZohoConnector(
        http,
        credentials,
        accounts_server=settings.accounts_server,
        oauth_client=context.oauth_client,
        on_refresh=context.on_credentials_refreshed,
        vendor_url=context.vendor_url,
        max_bytes=context.max_response_bytes,
    )


SPEC = ConnectorSpec(
    id="zoho_crm",
    kind="crm",
    display_name="Zoho CRM",
    settings_model=ZohoSettings,
    auth={"oauth2_authorization_code": OAuth2Credentials},
    factory=_open,
    # Zoho counts API credits per day and concurrent calls per organisation; these defaults
    # stay well inside the smallest paid edition's allowance.
    rate_limit=RateLimit(requests=100, per_seconds=60, concurrency=5),
    oauth=OAuthEndpoints(
        authorize_url="{accounts_server}/oauth/v2/auth",
        token_url="{accounts_server}/oauth/v2/token",  # noqa: S106 - a URL, not a secret
        revoke_url="{accounts_server}/oauth/v2/token/revoke",
        scopes=SCOPES,
        # A refresh token is issued only for offline access, and only on the first consent
        # unless the consent screen is shown again.
        authorize_params={"access_type": "offline", "prompt": "consent"},
    ),
    description="Contacts, accounts, deals and notes in a Zoho CRM organisation (API v5).",
    docs_url="https://www.zoho.com/crm/developer/docs/api/v5/",
)

__all__ = ["DATA_CENTRES", "SPEC", "ZohoConnector", "ZohoSettings"]
