"""A Zoho CRM peer: the slice of Zoho's accounts server and CRM v5 API the Zoho connector speaks.

Two servers, as Zoho has: the **accounts server** of a data centre (``accounts.zoho.com``,
``.eu``, ``.in``, ...) issues tokens, and its token response names the **API domain**
(``api_domain``, e.g. ``https://www.zohoapis.eu``) every CRM call must go to. The peer runs them
on two ports, so a connector that ignores ``api_domain`` fails here as it would at Zoho.

What it follows, and where Zoho documents it:

- **OAuth**: ``POST /oauth/v2/token`` with ``grant_type=authorization_code`` (code →
  ``access_token``, ``refresh_token``, ``api_domain``, ``expires_in``) or
  ``grant_type=refresh_token`` (→ a new ``access_token`` and ``api_domain``; the refresh token
  stays). Errors are bodies like ``{"error": "invalid_code"}`` with status 200.
  ``POST /oauth/v2/token/revoke?token=`` revokes a refresh token.
  https://www.zoho.com/crm/developer/docs/api/v5/access-refresh.html,
  .../v5/refresh.html, .../v5/revoke-tokens.html, .../v5/multi-dc.html
- **Auth on the API**: ``Authorization: Zoho-oauthtoken {access_token}``; an unknown or
  expired token is a 401 ``INVALID_TOKEN``, no token a 401 ``AUTHENTICATION_FAILURE``.
- **Records** (Contacts, Accounts, Deals, Notes): ``GET /crm/v5/{module}?fields=...`` (``fields``
  is required in v5) pages with ``per_page`` (at most 200) and ``page_token``; the answer's
  ``info`` carries ``per_page``, ``count``, ``more_records`` and ``next_page_token``. A module
  with no records answers 204 with no body. ``sort_by`` (``id``, ``Created_Time`` or
  ``Modified_Time``; ``id`` by default) and ``sort_order`` (``asc`` or ``desc``; ``desc`` by
  default) order a listing; the docs leave a listing with neither open, and the peer lists it
  by id, ascending. The ``If-Modified-Since`` header (ISO 8601 with an offset) keeps the records
  modified after that moment; when none was, the answer is 304 with no body. An update moves a
  record's ``Modified_Time``. ``POST /crm/v5/{module}`` (201) and ``PUT /crm/v5/{module}/{id}``
  take ``{"data": [record]}`` and answer per record ``{code, details: {id, ...}, message,
  status}``; a missing mandatory field is ``MANDATORY_NOT_FOUND`` with its ``api_name``; an
  unknown id on update ``INVALID_DATA``.
  https://www.zoho.com/crm/developer/docs/api/v5/get-records.html, .../insert-records.html,
  .../update-records.html, https://www.zoho.com/crm/developer/docs/api/v8/get-records.html
- **Notes**: created in ``Notes`` with ``Parent_Id: {module: {api_name}, id}``; a record's notes
  are its related list ``GET /crm/v5/{module}/{id}/Notes?fields=``.
  https://www.zoho.com/crm/developer/docs/api/v5/create-notes.html, .../get-related-records.html
- **Search**: ``GET /crm/v5/{module}/search?email=`` or ``criteria=(Field:equals:value)``,
  with ``(``, ``)``, ``,`` and ``\\`` escaped by a backslash (204 when nothing matches; a
  field the module lacks is a 400 ``INVALID_QUERY``).
  https://www.zoho.com/crm/developer/docs/api/v5/search-records.html
- **Fields**: ``GET /crm/v5/settings/fields?module=`` lists a module's fields (the Deals
  ``Stage`` field with its ``pick_list_values``: probability and forecast type);
  ``POST /crm/v6/settings/fields?module=`` creates a custom text field whose API name is its
  label with underscores. Writes drop fields the module lacks.
  https://www.zoho.com/crm/developer/docs/api/v5/field-meta.html,
  https://www.zoho.com/crm/developer/docs/api/v6/create-custom-field.html
- **Organisation**: ``GET /crm/v5/org``. https://www.zoho.com/crm/developer/docs/api/v5/get-org-data.html
- **Errors and limits**: API errors are ``{code, details, message, status: "error"}``
  (https://www.zoho.com/crm/developer/docs/api/v5/status-codes.html); past the allowance the
  answer is a 429 ``TOO_MANY_REQUESTS`` (https://www.zoho.com/crm/developer/docs/api/v5/api-limits.html).

A test queues :class:`Fault` answers for a path prefix, expires tokens, or lowers the allowance;
it reads what the peer received in ``requests``.

Use it with ``pytest_plugins = ["tests.peers.zoho"]`` (PYTEST_DONT_REWRITE: test modules
import it before pytest loads it as a plugin).
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.peers.asgi import Swappable, serve

CLIENT_ID = "1000.ZOHOCLIENTID"
CLIENT_SECRET = "zoho-client-secret"
REDIRECT_URI = "https://app.example.com/api/v1/oauth/callback"

MODULES = ("Contacts", "Accounts", "Deals", "Notes")
# The fields each module has before any custom field is added; Zoho ignores others on write.
STANDARD_FIELDS = {
    "Contacts": {"First_Name", "Last_Name", "Email", "Phone", "Mobile", "Title", "Account_Name",
                 "Owner", "Description"},
    "Accounts": {"Account_Name", "Website", "Phone", "Industry", "Owner", "Description"},
    "Deals": {"Deal_Name", "Amount", "Currency", "Pipeline", "Stage", "Closing_Date",
              "Account_Name", "Contact_Name", "Owner", "Description"},
    "Notes": {"Note_Title", "Note_Content", "Parent_Id"},
}  # fmt: skip
LOOKUPS = {"Account_Name": ("Accounts", "Account_Name"), "Contact_Name": ("Contacts", "Last_Name")}
MANDATORY = {
    "Contacts": ("Last_Name",),
    "Accounts": ("Account_Name",),
    "Deals": ("Deal_Name", "Stage"),
    "Notes": ("Note_Content", "Parent_Id"),
}
# Stage, probability (%) and forecast type, as a new Zoho CRM organisation has them.
STAGES = (
    ("Qualification", 10, "Open"),
    ("Needs Analysis", 20, "Open"),
    ("Proposal/Price Quote", 75, "Open"),
    ("Negotiation/Review", 90, "Open"),
    ("Closed Won", 100, "Closed Won"),
    ("Closed Lost", 0, "Closed Lost"),
)
# The fields a listing can be sorted by.
SORTABLE = ("id", "Created_Time", "Modified_Time")


@dataclass
class Fault:
    """One answer the peer gives instead of serving the request."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def error(cls, status: int, code: str, message: str, **headers: str) -> Fault:
        return cls(status, _error(code, message), dict(headers))


@dataclass
class ZohoPeer:
    """The peer's state: the URLs of both servers, tokens, records, faults and requests."""

    accounts_url: str = ""
    api_url: str = ""
    # What token responses name as the API domain: Zoho's real one for the data centre, which
    # a test maps to ``api_url`` (as the platform's vendor origins do).
    api_domain: str = "https://www.zohoapis.eu"
    org_id: str = "20050398221"
    custom_fields: dict[str, set[str]] = field(default_factory=lambda: {m: set() for m in MODULES})
    # access token -> expiry (epoch s)
    access_tokens: dict[str, float] = field(default_factory=dict)
    refresh_tokens: set[str] = field(default_factory=set)
    authorization_codes: set[str] = field(default_factory=set)
    records: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {module: {} for module in MODULES}
    )
    allowance: int = 1_000_000
    used: int = 0
    # Page tokens handed out: token -> (module, next index)
    page_tokens: dict[str, tuple[str, int]] = field(default_factory=dict)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    # (method, path and query, headers, body) of every request received
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(5_725_767_000_000_100_001))

    def fail(self, path_prefix: str, *faults: Fault) -> None:
        """Answer the next requests whose path starts with ``path_prefix`` with ``faults``."""
        self.faults.setdefault(path_prefix, []).extend(faults)

    def grant(self) -> str:
        """A refresh token, as the consent screen and the code exchange would leave one."""
        token = f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
        self.refresh_tokens.add(token)
        return token

    def authorization_code(self) -> str:
        code = f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
        self.authorization_codes.add(code)
        return code

    def expire_all(self) -> None:
        """Expire every access token issued so far (an hour passing, as far as Zoho knows)."""
        for token in self.access_tokens:
            self.access_tokens[token] = time.time() - 1

    def seed(
        self, module: str, record: dict[str, Any], *, at: datetime | None = None
    ) -> dict[str, Any]:
        """Store a record as if it had been created in Zoho (``at``, else now; fields it
        lacks are dropped)."""
        known = self.fields_of(module)
        stored = {k: v for k, v in record.items() if k in known}
        stored |= {**self._stamp(at), "id": str(next(self._ids))}
        self.records[module][stored["id"]] = stored
        return stored

    def fields_of(self, module: str) -> set[str]:
        return STANDARD_FIELDS[module] | self.custom_fields[module]

    def seen(self, method: str, path_prefix: str) -> list[tuple[str, str, dict[str, str], bytes]]:
        return [r for r in self.requests if r[0] == method and r[1].startswith(path_prefix)]

    @staticmethod
    def _stamp(at: datetime | None = None) -> dict[str, Any]:
        # Zoho writes times to the second, with the offset of the organisation's time zone.
        now = (at or datetime.now(UTC)).astimezone().isoformat(timespec="seconds")
        return {"Created_Time": now, "Modified_Time": now}

    def _next_fault(self, path: str) -> Fault | None:
        for prefix, queued in self.faults.items():
            if path.startswith(prefix) and queued:
                return queued.pop(0)
        return None


_CRITERIA = re.compile(r"^\((\w+):equals:((?:\\.|[^\\()])*)\)$")


def _sort_key(name: str) -> Callable[[dict[str, Any]], Any]:
    if name == "id":
        return lambda record: int(record["id"])
    return lambda record: datetime.fromisoformat(record[name])


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def _error(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"code": code, "details": details or {}, "message": message, "status": "error"}


async def _record(peer: ZohoPeer, request: Request) -> Response | None:
    # The request target with its query: Zoho takes much of its input there.
    target = f"{request.url.path}?{request.url.query}" if request.url.query else request.url.path
    peer.requests.append((request.method, target, dict(request.headers), await request.body()))
    fault = peer._next_fault(request.url.path)
    if fault is None:
        return None
    if isinstance(fault.body, (dict, list)):
        return JSONResponse(fault.body, fault.status, headers=fault.headers)
    return Response(fault.body or b"", fault.status, headers=fault.headers)


def build_accounts_app(peer: ZohoPeer) -> Starlette:
    """The accounts server of one data centre."""

    async def token(request: Request) -> Response:
        if (fault := await _record(peer, request)) is not None:
            return fault
        # Zoho documents the parameters in the query string; it accepts a form body too.
        params = dict(request.query_params) | {k: str(v) for k, v in (await request.form()).items()}
        if params.get("client_id") != CLIENT_ID or params.get("client_secret") != CLIENT_SECRET:
            return JSONResponse({"error": "invalid_client"})
        grant = params.get("grant_type")
        body: dict[str, Any]
        if grant == "authorization_code":
            code = params.get("code", "")
            if code not in peer.authorization_codes or params.get("redirect_uri") != REDIRECT_URI:
                return JSONResponse({"error": "invalid_code"})
            peer.authorization_codes.discard(code)
            body = {"refresh_token": peer.grant()}
        elif grant == "refresh_token":
            if params.get("refresh_token") not in peer.refresh_tokens:
                return JSONResponse({"error": "invalid_code"})
            body = {}
        else:
            return JSONResponse({"error": "unsupported_grant_type"})
        access = f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
        peer.access_tokens[access] = time.time() + 3600
        return JSONResponse(
            {
                "access_token": access,
                **body,
                "scope": "ZohoCRM.modules.ALL ZohoCRM.settings.fields.READ",
                "api_domain": peer.api_domain,
                "token_type": "Bearer",
                "expires_in": 3600,
            }
        )

    async def revoke(request: Request) -> Response:
        if (fault := await _record(peer, request)) is not None:
            return fault
        form = {k: str(v) for k, v in (await request.form()).items()}
        peer.refresh_tokens.discard(form.get("token") or request.query_params.get("token", ""))
        return JSONResponse({"status": "success"})

    return Starlette(
        routes=[
            Route("/oauth/v2/token", token, methods=["POST"]),
            Route("/oauth/v2/token/revoke", revoke, methods=["POST"]),
        ]
    )


def build_api_app(peer: ZohoPeer) -> Starlette:
    """The CRM API of the same data centre."""

    def refuse(
        status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> Response:
        return JSONResponse(_error(code, message, details), status)

    async def guard(request: Request) -> Response | None:
        if (fault := await _record(peer, request)) is not None:
            return fault
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme != "Zoho-oauthtoken" or not token:
            return refuse(401, "AUTHENTICATION_FAILURE", "Authentication failed")
        if peer.access_tokens.get(token, 0) < time.time():
            return refuse(401, "INVALID_TOKEN", "invalid oauth token")
        if peer.used >= peer.allowance:
            return refuse(
                429,
                "TOO_MANY_REQUESTS",
                "You have reached the maximum number of API calls allowed. Try again later.",
            )
        peer.used += 1
        return None

    def module_of(request: Request) -> str | None:
        module = str(request.path_params["module"])
        return module if module in MODULES else None

    def fields_of(request: Request) -> list[str] | Response:
        raw = request.query_params.get("fields")
        if not raw:
            return refuse(
                400,
                "REQUIRED_PARAM_MISSING",
                "One of the expected parameter is missing",
                {"param": "fields"},
            )
        return raw.split(",")

    def value(record: dict[str, Any], name: str) -> Any:
        found = record.get(name)
        if name in LOOKUPS and isinstance(found, dict):
            # Lookups come back with the linked record's name, as Zoho sends them.
            module, label = LOOKUPS[name]
            linked = peer.records[module].get(str(found.get("id")), {})
            return {"name": linked.get(label), "id": found.get("id")}
        return found

    def view(record: dict[str, Any], fields: list[str]) -> dict[str, Any]:
        return {"id": record["id"]} | {name: value(record, name) for name in fields}

    def paged(
        module: str,
        records: list[dict[str, Any]],
        request: Request,
        fields: list[str],
        *,
        sort_by: str = "id",
        sort_order: str = "asc",
    ) -> Response:
        try:
            per_page = int(request.query_params.get("per_page", "200"))
        except ValueError:
            return refuse(400, "INVALID_DATA", "invalid data", {"param": "per_page"})
        if not 1 <= per_page <= 200:
            return refuse(400, "INVALID_DATA", "invalid data", {"param": "per_page"})
        start = 0
        if page_token := request.query_params.get("page_token"):
            remembered = peer.page_tokens.get(page_token)
            if remembered is None or remembered[0] != module:
                return refuse(400, "INVALID_DATA", "invalid data", {"param": "page_token"})
            start = remembered[1]
        ordered = sorted(records, key=lambda r: int(r["id"]))
        ordered.sort(key=_sort_key(sort_by), reverse=sort_order == "desc")
        chunk = ordered[start : start + per_page]
        if not chunk:
            return Response(status_code=204)
        more = start + per_page < len(ordered)
        next_token = None
        if more:
            next_token = secrets.token_hex(20)
            peer.page_tokens[next_token] = (module, start + per_page)
        return JSONResponse(
            {
                "data": [view(r, fields) for r in chunk],
                "info": {
                    "per_page": per_page,
                    "next_page_token": next_token,
                    "count": len(chunk),
                    "sort_by": sort_by,
                    "page": start // per_page + 1,
                    "previous_page_token": None,
                    "page_token_expiry": None,
                    "sort_order": sort_order,
                    "more_records": more,
                },
            }
        )

    async def list_records(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        module = module_of(request)
        if module is None:
            return refuse(400, "INVALID_MODULE", "the module name given seems to be invalid")
        fields = fields_of(request)
        if isinstance(fields, Response):
            return fields
        sort_by = request.query_params.get("sort_by")
        sort_order = request.query_params.get("sort_order")
        if sort_by not in (None, *SORTABLE):
            return refuse(400, "INVALID_DATA", "invalid data", {"param": "sort_by"})
        if sort_order not in (None, "asc", "desc"):
            return refuse(400, "INVALID_DATA", "invalid data", {"param": "sort_order"})
        if sort_by is None and sort_order is None:
            sort_by, sort_order = "id", "asc"
        records = list(peer.records[module].values())
        if (raw_since := request.headers.get("if-modified-since")) is not None:
            try:
                since = datetime.fromisoformat(raw_since)
            except ValueError:
                since = None
            if since is None or since.tzinfo is None:
                return refuse(400, "INVALID_DATA", "invalid data", {"header": "If-Modified-Since"})
            records = [r for r in records if datetime.fromisoformat(r["Modified_Time"]) > since]
            if not records:
                return Response(status_code=304)
        return paged(
            module,
            records,
            request,
            fields,
            sort_by=sort_by or "id",
            sort_order=sort_order or "desc",
        )

    def missing_mandatory(module: str, record: dict[str, Any]) -> Response | None:
        for name in MANDATORY[module]:
            if record.get(name) in (None, ""):
                return JSONResponse(
                    {
                        "data": [
                            _error(
                                "MANDATORY_NOT_FOUND",
                                "required field not found",
                                {"api_name": name, "json_path": f"$.data[0].{name}"},
                            )
                        ]
                    },
                    400,
                )
        return None

    def success(record: dict[str, Any], message: str) -> dict[str, Any]:
        return {
            "data": [
                {
                    "code": "SUCCESS",
                    "details": {
                        "Modified_Time": record["Modified_Time"],
                        "Modified_By": {"name": "Patricia Boyle", "id": "5725767000000411001"},
                        "Created_Time": record["Created_Time"],
                        "id": record["id"],
                        "Created_By": {"name": "Patricia Boyle", "id": "5725767000000411001"},
                    },
                    "message": message,
                    "status": "success",
                }
            ]
        }

    async def create_records(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        module = module_of(request)
        if module is None:
            return refuse(400, "INVALID_MODULE", "the module name given seems to be invalid")
        data = (await request.json()).get("data")
        if not isinstance(data, list) or len(data) != 1:
            return refuse(400, "INVALID_DATA", "invalid data")
        if (missing := missing_mandatory(module, data[0])) is not None:
            return missing
        if module == "Notes":
            parent = data[0]["Parent_Id"]
            parent_module = parent.get("module", {}).get("api_name")
            if (
                parent_module not in peer.records
                or parent.get("id") not in peer.records[parent_module]
            ):
                return JSONResponse(
                    {
                        "data": [
                            _error(
                                "INVALID_DATA",
                                "the related id given seems to be invalid",
                                {"api_name": "Parent_Id"},
                            )
                        ]
                    },
                    400,
                )
        record = peer.seed(module, data[0])
        return JSONResponse(success(record, "record added"), 201)

    async def read_record(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        module = module_of(request)
        record = peer.records[module].get(str(request.path_params["id"])) if module else None
        if record is None:
            return Response(status_code=204)
        return JSONResponse({"data": [view(record, sorted(k for k in record if k != "id"))]})

    async def update_record(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        module = module_of(request)
        record_id = str(request.path_params["id"])
        record = peer.records[module].get(record_id) if module else None
        if module is None or record is None:
            return JSONResponse(
                {
                    "data": [
                        _error(
                            "INVALID_DATA", "the id given seems to be invalid", {"id": record_id}
                        )
                    ]
                },
                400,
            )
        data = (await request.json()).get("data")
        if not isinstance(data, list) or len(data) != 1:
            return refuse(400, "INVALID_DATA", "invalid data")
        known = peer.fields_of(module)
        record.update({k: v for k, v in data[0].items() if k in known})
        record["Modified_Time"] = peer._stamp()["Modified_Time"]
        return JSONResponse(success(record, "record updated"))

    async def search_records(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        module = module_of(request)
        if module is None:
            return refuse(400, "INVALID_MODULE", "the module name given seems to be invalid")
        email = request.query_params.get("email")
        criteria = request.query_params.get("criteria")
        if email:
            name, wanted = "Email", email
        elif criteria:
            match = _CRITERIA.fullmatch(criteria)
            if match is None:
                return refuse(400, "INVALID_QUERY", "invalid query formed", {"criteria": criteria})
            name, wanted = match.group(1), _unescape(match.group(2))
            if name not in peer.fields_of(module):
                return refuse(400, "INVALID_QUERY", "invalid query formed", {"api_name": name})
        else:
            return refuse(
                400,
                "REQUIRED_PARAM_MISSING",
                "One of the expected parameter is missing",
                {"param": "criteria"},
            )
        found = [
            r
            for r in peer.records[module].values()
            if str(r.get(name) or "").lower() == wanted.lower()
        ]
        fields = request.query_params.get("fields")
        names = fields.split(",") if fields else sorted({k for r in found for k in r})
        return paged(module, found, request, names)

    async def related_notes(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        module = module_of(request)
        parent = str(request.path_params["id"])
        if module is None or parent not in peer.records[module]:
            return refuse(400, "INVALID_DATA", "the related id given seems to be invalid")
        fields = fields_of(request)
        if isinstance(fields, Response):
            return fields
        notes = [
            n
            for n in peer.records["Notes"].values()
            if n["Parent_Id"].get("id") == parent
            and n["Parent_Id"].get("module", {}).get("api_name") == module
        ]
        return paged("Notes", notes, request, fields)

    async def field_meta(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        module = request.query_params.get("module", "")
        if module not in MODULES:
            return refuse(400, "INVALID_MODULE", "the module name given seems to be invalid")
        fields: list[dict[str, Any]] = [
            {"api_name": name, "data_type": "text", "field_label": name.replace("_", " "),
             "custom_field": name in peer.custom_fields[module]}
            for name in sorted(peer.fields_of(module) - {"Stage"})
        ]  # fmt: skip
        if module == "Deals":
            fields.append(
                {
                    "api_name": "Stage",
                    "data_type": "picklist",
                    "field_label": "Stage",
                    "custom_field": False,
                    "pick_list_values": [
                        {
                            "display_value": stage,
                            "actual_value": stage,
                            "sequence_number": order + 1,
                            "probability": probability,
                            "forecast_type": forecast,
                            "id": str(5725767000000006801 + order),
                            "type": "used",
                        }
                        for order, (stage, probability, forecast) in enumerate(STAGES)
                    ],
                }
            )
        return JSONResponse({"fields": fields})

    async def create_field(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        module = request.query_params.get("module", "")
        if module not in MODULES:
            return refuse(400, "INVALID_MODULE", "the module name given seems to be invalid")
        outcomes = []
        for definition in (await request.json()).get("fields") or []:
            label = str(definition.get("field_label") or "")
            if not label or definition.get("data_type") != "text":
                return refuse(400, "INVALID_DATA", "invalid data", {"api_name": "field_label"})
            # Zoho derives the API name from the label.
            api_name = "_".join(label.split())
            if api_name in peer.fields_of(module):
                return refuse(400, "DUPLICATE_DATA", "duplicate data", {"api_name": api_name})
            peer.custom_fields[module].add(api_name)
            outcomes.append(
                {
                    "code": "SUCCESS",
                    "details": {"id": str(next(peer._ids))},
                    "message": "field created",
                    "status": "success",
                }
            )
        return JSONResponse({"fields": outcomes}, 201)

    async def org(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        return JSONResponse(
            {
                "org": [
                    {
                        "id": peer.org_id,
                        "company_name": "Acme Agency GmbH",
                        "time_zone": "Europe/Berlin",
                        "country_code": "DE",
                        "zgid": "20050398221",
                    }
                ]
            }
        )

    return Starlette(
        routes=[
            Route("/crm/v5/org", org, methods=["GET"]),
            Route("/crm/v5/settings/fields", field_meta, methods=["GET"]),
            Route("/crm/v6/settings/fields", create_field, methods=["POST"]),
            Route("/crm/v5/{module}/search", search_records, methods=["GET"]),
            Route("/crm/v5/{module}", list_records, methods=["GET"]),
            Route("/crm/v5/{module}", create_records, methods=["POST"]),
            Route("/crm/v5/{module}/{id}/Notes", related_notes, methods=["GET"]),
            Route("/crm/v5/{module}/{id}", read_record, methods=["GET"]),
            Route("/crm/v5/{module}/{id}", update_record, methods=["PUT"]),
        ]
    )


@pytest.fixture(scope="session")
def _zoho_servers() -> Iterator[tuple[Swappable, str, Swappable, str]]:
    accounts, api = Swappable(), Swappable()
    with serve(accounts) as accounts_url, serve(api) as api_url:
        yield accounts, accounts_url, api, api_url


@pytest.fixture
def zoho_peer(_zoho_servers: tuple[Swappable, str, Swappable, str]) -> ZohoPeer:
    """A Zoho data centre (accounts server and API) with an empty CRM, for one test."""
    accounts, accounts_url, api, api_url = _zoho_servers
    peer = ZohoPeer(accounts_url=accounts_url, api_url=api_url)
    accounts.app = build_accounts_app(peer)
    api.app = build_api_app(peer)
    return peer
