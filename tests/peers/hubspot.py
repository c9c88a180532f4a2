"""A HubSpot peer: the slice of HubSpot's CRM v3 API that the HubSpot connector speaks, over HTTP.

What it follows, and where HubSpot documents it:

- **Objects** (contacts, companies, deals, and the engagements notes, calls, emails, meetings,
  tasks): ``GET /crm/v3/objects/{type}`` lists with ``limit`` (at most 100), ``after``,
  ``properties`` and ``associations``; the page's ``paging.next.after`` is the cursor of the
  next page and is absent on the last one. ``GET .../{id}``, ``POST`` (create, 201) and
  ``PATCH .../{id}`` (update) carry ``{"properties": {...}}``; property values are strings and
  ``""`` clears one; an unknown property is a 400 ``VALIDATION_ERROR``
  (``PROPERTY_DOESNT_EXIST``), a second contact with the same e-mail a 409 ``CONFLICT`` naming
  the existing id, an unknown id a 404 ``OBJECT_NOT_FOUND``.
  https://developers.hubspot.com/docs/api/crm/contacts, .../crm/companies, .../crm/deals,
  .../crm/engagements
- **Associations**: a create may carry ``associations`` with ``HUBSPOT_DEFINED`` type ids
  (1 contact→primary company; 3 deal→contact, 5 deal→primary company; 202/190/214 note→contact/
  company/deal, and the matching ids of calls, emails, meetings and tasks); ``PUT
  /crm/v4/objects/{type}/{id}/associations/default/{toType}/{toId}`` links two records; a
  contact's primary company shows as ``associatedcompanyid``.
  https://developers.hubspot.com/docs/api/crm/associations/v4
- **Search**: ``POST /crm/v3/objects/{type}/search`` with ``filterGroups`` (OR of groups, AND
  of a group's filters), ``sorts``, ``properties``, ``limit`` (at most 200), ``after``; answers
  ``total``, ``results`` and ``paging``. Filters take the operators ``EQ``, ``NEQ``, ``GT``,
  ``GTE``, ``LT`` and ``LTE``: date-time properties compare as instants, their values given in
  epoch milliseconds or as ISO 8601 strings; number properties compare numerically; strings
  case-insensitively. ``IN`` takes ``values`` (a list, here at most 100; HubSpot asks string
  values in lower case). The ``associations.{type}`` pseudo-property takes ``EQ``. A query pages
  through at most 10,000 results: an ``after`` whose page would reach past them is a 400.
  Search answers carry no rate-limit headers. https://developers.hubspot.com/docs/api/crm/search
- **Properties**: ``GET /crm/v3/properties/{type}/{name}`` (404 when missing) and ``POST
  /crm/v3/properties/{type}`` (``name``, ``label`` and an existing ``groupName`` required; 409
  when it exists); ``POST /crm/v3/properties/{type}/groups`` creates a group (409 when it
  exists);
  a property with ``hasUniqueValue`` refuses a value another record holds (409).
  https://developers.hubspot.com/docs/api/crm/properties
- **Pipelines**: ``GET /crm/v3/pipelines/deals`` lists pipelines with their ordered stages and
  each stage's ``isClosed`` and ``probability``. https://developers.hubspot.com/docs/api/crm/pipelines
- **Account**: ``GET /account-info/v3/details`` (``portalId``, ``timeZone``,
  ``companyCurrency``, ``uiDomain``).
  https://developers.hubspot.com/docs/api/settings/account-information-api
- **Auth**: ``Authorization: Bearer`` with a private app's token or an OAuth access token; a
  missing or unknown token is a 401 ``INVALID_AUTHENTICATION``, an expired OAuth token a 401
  ``EXPIRED_AUTHENTICATION``. ``POST /oauth/v1/token`` (form) exchanges an authorization code
  or a refresh token for ``access_token``, ``refresh_token`` and ``expires_in``; a bad refresh
  token is a 400 ``BAD_REFRESH_TOKEN``; ``DELETE /oauth/v1/refresh-tokens/{token}`` revokes one.
  https://developers.hubspot.com/docs/api/oauth/tokens, .../api/private-apps
- **Errors and limits**: error bodies are ``{status: "error", message, correlationId,
  category}``; responses carry ``X-HubSpot-RateLimit-Max / -Remaining /
  -Interval-Milliseconds`` (the rolling ten-second window), ``-Secondly / -Secondly-Remaining``
  and ``-Daily / -Daily-Remaining``;
  past either limit the answer is a 429 with ``errorType: RATE_LIMIT`` and the ``policyName``
  (``TEN_SECONDLY_ROLLING`` or ``DAILY``). https://developers.hubspot.com/docs/api/usage-details,
  https://developers.hubspot.com/docs/api/error-handling

A test changes the peer's behaviour by queuing :class:`Fault` answers for a path prefix, by
lowering its limits, or by expiring tokens; it reads what the peer received in ``requests``.

Use it with ``pytest_plugins = ["tests.peers.hubspot"]`` (PYTEST_DONT_REWRITE: test modules
import it before pytest loads it as a plugin).
"""

from __future__ import annotations

import bisect
import itertools
import json
import operator
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.peers.asgi import Swappable, serve

CLIENT_ID = "hubspot-client-id"
CLIENT_SECRET = "hubspot-client-secret"
PRIVATE_APP_TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"

# The properties HubSpot returns when a request names none.
DEFAULT_PROPERTIES = {
    "contacts": (
        "createdate",
        "email",
        "firstname",
        "hs_object_id",
        "lastmodifieddate",
        "lastname",
    ),
    "companies": ("createdate", "domain", "hs_object_id", "hs_lastmodifieddate", "name"),
    "deals": (
        "amount",
        "closedate",
        "createdate",
        "dealname",
        "dealstage",
        "hs_lastmodifieddate",
        "hs_object_id",
        "pipeline",
    ),
}
_ENGAGEMENT_DEFAULTS = ("hs_createdate", "hs_lastmodifieddate", "hs_object_id", "hs_timestamp")
# The writable properties each object type has before any custom property is added.
STANDARD_PROPERTIES = {
    "contacts": {"email", "firstname", "lastname", "phone", "company", "jobtitle", "website",
                 "hubspot_owner_id"},
    "companies": {"name", "domain", "phone", "industry", "city", "country", "website",
                  "hubspot_owner_id"},
    "deals": {"dealname", "amount", "dealstage", "pipeline", "closedate", "deal_currency_code",
              "hubspot_owner_id"},
    "notes": {"hs_note_body", "hs_timestamp", "hubspot_owner_id"},
    "calls": {"hs_call_title", "hs_call_body", "hs_timestamp", "hubspot_owner_id"},
    "emails": {"hs_email_subject", "hs_email_text", "hs_timestamp", "hubspot_owner_id"},
    "meetings": {"hs_meeting_title", "hs_meeting_body", "hs_timestamp", "hubspot_owner_id"},
    "tasks": {"hs_task_subject", "hs_task_body", "hs_timestamp", "hubspot_owner_id"},
}  # fmt: skip
# Each object type's default property groups (engagements have none a custom property fits).
DEFAULT_GROUPS: dict[str, set[str]] = {
    "contacts": {"contactinformation"},
    "companies": {"companyinformation"},
    "deals": {"dealinformation"},
    "notes": set(),
    "calls": set(),
    "emails": set(),
    "meetings": set(),
    "tasks": set(),
}
# HUBSPOT_DEFINED association type ids, per object type, and the object type each points at.
ASSOCIATION_TYPES: dict[str, dict[int, str]] = {
    "contacts": {1: "companies", 279: "companies"},
    "companies": {},
    "deals": {3: "contacts", 5: "companies", 341: "companies"},
    "notes": {202: "contacts", 190: "companies", 214: "deals"},
    "calls": {194: "contacts", 182: "companies", 206: "deals"},
    "emails": {198: "contacts", 186: "companies", 210: "deals"},
    "meetings": {200: "contacts", 188: "companies", 212: "deals"},
    "tasks": {204: "contacts", 192: "companies", 216: "deals"},
}
_SINGULAR = {"contact": "contacts", "company": "companies", "deal": "deals"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# How search compares property values: date-times as instants, numbers numerically, the rest
# as case-insensitive strings.
DATETIME_PROPERTIES = frozenset(
    {"createdate", "lastmodifieddate", "hs_createdate", "hs_lastmodifieddate", "hs_timestamp",
     "closedate"}
)  # fmt: skip
NUMBER_PROPERTIES = frozenset({"hs_object_id", "amount", "associatedcompanyid"})
SEARCH_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "IN": lambda value, wanted: value in wanted,
    "EQ": operator.eq,
    "NEQ": operator.ne,
    "GT": operator.gt,
    "GTE": operator.ge,
    "LT": operator.lt,
    "LTE": operator.le,
}
PIPELINES: list[dict[str, Any]] = [
    {
        "id": "default",
        "label": "Sales Pipeline",
        "displayOrder": 0,
        "archived": False,
        "stages": [
            {
                "id": stage_id,
                "label": label,
                "displayOrder": order,
                "archived": False,
                "metadata": {"isClosed": str(closed).lower(), "probability": probability},
            }
            for order, (stage_id, label, closed, probability) in enumerate(
                [
                    ("appointmentscheduled", "Appointment Scheduled", False, "0.2"),
                    ("qualifiedtobuy", "Qualified To Buy", False, "0.4"),
                    ("contractsent", "Contract Sent", False, "0.9"),
                    ("closedwon", "Closed Won", True, "1.0"),
                    ("closedlost", "Closed Lost", True, "0.0"),
                ]
            )
        ],
    }
]


@dataclass
class Fault:
    """One answer the peer gives instead of serving the request."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def error(cls, status: int, category: str, message: str, **headers: str) -> Fault:
        return cls(status, _error_body(category, message), dict(headers))

    @classmethod
    def rate_limited(
        cls, policy: str = "TEN_SECONDLY_ROLLING", retry_after: int | None = None
    ) -> Fault:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return cls(429, _rate_limit_body(policy), headers)


@dataclass
class HubSpotPeer:
    """The peer's state: its URL, the account's records, tokens, limits, faults and requests."""

    url: str = ""
    portal_id: int = 62515
    records: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {kind: {} for kind in STANDARD_PROPERTIES}
    )
    # Custom properties created through the properties API: type -> name -> definition.
    custom_properties: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {kind: {} for kind in STANDARD_PROPERTIES}
    )
    # Property groups per type: the defaults and those created through the API.
    property_groups: dict[str, set[str]] = field(
        default_factory=lambda: {kind: set(groups) for kind, groups in DEFAULT_GROUPS.items()}
    )
    # Valid access tokens: the private app's, and OAuth tokens with their expiry (epoch s).
    access_tokens: dict[str, float] = field(
        default_factory=lambda: {PRIVATE_APP_TOKEN: float("inf")}
    )
    refresh_tokens: set[str] = field(default_factory=set)
    authorization_codes: set[str] = field(default_factory=set)
    # The rolling ten-second window and the daily allowance.
    interval_max: int = 190
    daily_max: int = 1_000_000
    window: deque[float] = field(default_factory=deque)
    daily_used: int = 0
    # The most results one search query pages through (HubSpot's is 10,000).
    search_cap: int = 10_000
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1001))
    # Type -> (property, lower-cased value) -> ids: kept by the records' properties as they
    # change (through the API or a test's own hands), so equality searches need no scan.
    _values: dict[str, dict[tuple[str, str], set[str]]] = field(default_factory=dict)

    def fail(self, path_prefix: str, *faults: Fault) -> None:
        """Answer the next requests whose path starts with ``path_prefix`` with ``faults``."""
        self.faults.setdefault(path_prefix, []).extend(faults)

    def issue_oauth_tokens(self, expires_in: int = 1800) -> tuple[str, str]:
        """A fresh OAuth access token and refresh token, as the token endpoint would issue."""
        access = f"oauth-{secrets.token_hex(12)}"
        refresh = f"refresh-{secrets.token_hex(12)}"
        self.access_tokens[access] = time.time() + expires_in
        self.refresh_tokens.add(refresh)
        return access, refresh

    def expire(self, access_token: str) -> None:
        self.access_tokens[access_token] = time.time() - 1

    def seed(
        self, kind: str, properties: dict[str, str | None], *, at: datetime | None = None
    ) -> dict[str, Any]:
        """Store a record as if it had been created in HubSpot (``at``, else now); returns
        it."""
        now = _stamp(at) if at is not None else _now()
        record_id = str(next(self._ids))
        stamps = {"hs_object_id": record_id, "createdate": now, "hs_createdate": now,
                  "lastmodifieddate": now, "hs_lastmodifieddate": now}  # fmt: skip
        record = {
            "id": record_id,
            "properties": _Properties(self._index_of(kind), record_id, {**properties, **stamps}),
            "createdAt": now,
            "updatedAt": now,
            "archived": False,
            "associations": set(),
        }
        self.records[kind][record_id] = record
        return record

    def holding(self, kind: str, name: str, value: object) -> list[dict[str, Any]]:
        """The records of ``kind`` whose string property ``name`` is ``value`` (ignoring
        case), archived ones included: found through the index, not a scan."""
        ids = self._index_of(kind).get((name, str(value).lower()), set())
        return [self.records[kind][i] for i in sorted(ids, key=int) if i in self.records[kind]]

    def _index_of(self, kind: str) -> dict[tuple[str, str], set[str]]:
        return self._values.setdefault(kind, {})

    def associate(self, kind: str, record_id: str, other_kind: str, other_id: str) -> None:
        """Link two records both ways; a contact's first company becomes its primary one."""
        self.records[kind][record_id]["associations"].add((other_kind, other_id))
        self.records[other_kind][other_id]["associations"].add((kind, record_id))
        if (kind, other_kind) == ("companies", "contacts"):
            kind, record_id, other_kind, other_id = other_kind, other_id, kind, record_id
        if (kind, other_kind) == ("contacts", "companies"):
            properties = self.records["contacts"][record_id]["properties"]
            properties.setdefault("associatedcompanyid", other_id)

    def properties_of(self, kind: str) -> set[str]:
        return STANDARD_PROPERTIES[kind] | set(self.custom_properties[kind])

    def seen(self, method: str, path_prefix: str) -> list[tuple[str, str, dict[str, str], bytes]]:
        return [r for r in self.requests if r[0] == method and r[1].startswith(path_prefix)]

    def _next_fault(self, path: str) -> Fault | None:
        for prefix, queued in self.faults.items():
            if path.startswith(prefix) and queued:
                return queued.pop(0)
        return None


class _Properties(dict[str, Any]):
    """A record's properties, keeping the peer's value index as they change."""

    def __init__(
        self, index: dict[tuple[str, str], set[str]], record_id: str, values: dict[str, Any]
    ) -> None:
        super().__init__()
        self._index, self._id = index, record_id
        self.update(values)

    def __setitem__(self, name: str, value: Any) -> None:
        self._forget(name)
        super().__setitem__(name, value)
        if value not in (None, ""):
            self._index.setdefault((name, str(value).lower()), set()).add(self._id)

    def __delitem__(self, name: str) -> None:
        self._forget(name)
        super().__delitem__(name)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for name, value in dict(*args, **kwargs).items():
            self[name] = value

    def setdefault(self, name: str, default: Any = None) -> Any:
        if name not in self:
            self[name] = default
        return self[name]

    def pop(self, name: str, *default: Any) -> Any:
        self._forget(name)
        return super().pop(name, *default)

    def _forget(self, name: str) -> None:
        old = self.get(name)
        if old not in (None, ""):
            self._index.get((name, str(old).lower()), set()).discard(self._id)


def _now() -> str:
    return _stamp(datetime.now(UTC))


def _stamp(moment: datetime) -> str:
    """A date-time property as HubSpot writes it: UTC, milliseconds, ``Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _wanted(name: str, op: str, rule: dict[str, Any]) -> Any:
    """What a search rule compares with: its ``value``, or for ``IN`` the set of its
    ``values``. Raises KeyError or ValueError for a rule that holds none of it."""
    if name.startswith("associations."):
        return str(rule["value"])
    if op != "IN":
        return _comparable(name, rule.get("value"))
    values = rule["values"]
    if not isinstance(values, list) or not 0 < len(values) <= 100:
        raise ValueError("IN takes a list of 1 to 100 values")
    return frozenset(_comparable(name, value) for value in values) - {None}


def _comparable(name: str, value: Any) -> Decimal | str | None:
    """A property value as search compares it (None: no value). Raises ValueError for a
    value the property's type cannot hold."""
    if value is None or value == "":
        return None
    if name in DATETIME_PROPERTIES:
        text = str(value)
        if text.lstrip("-").isdigit():
            return Decimal(text)  # epoch milliseconds
        moment = datetime.fromisoformat(text)
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return Decimal((moment - _EPOCH) // timedelta(milliseconds=1))
    if name in NUMBER_PROPERTIES:
        try:
            return Decimal(str(value))
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a number") from None
    return str(value).lower()


def _stored(record: dict[str, Any], name: str) -> Decimal | str | None:
    """A record's property as search compares it; a stored value its type cannot hold (a
    seeded ``amount`` of "lots") counts as no value."""
    try:
        return _comparable(name, record["properties"].get(name))
    except ValueError:
        return None


def _error_body(category: str, message: str) -> dict[str, Any]:
    return {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
    }


def _rate_limit_body(policy: str) -> dict[str, Any]:
    return {
        "status": "error",
        "message": f"You have reached your {policy.lower()} limit.",
        "errorType": "RATE_LIMIT",
        "correlationId": str(uuid.uuid4()),
        "policyName": policy,
        "groupName": "publicapi:private-app-1234",
    }


def _by_property(name: str) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A sort key: records without a value first, the others by their compared value."""

    def key(record: dict[str, Any]) -> tuple[Any, ...]:
        value = _stored(record, name)
        return (0,) if value is None else (1, value)

    return key


def build_app(peer: HubSpotPeer) -> Starlette:
    """The peer's ASGI app over ``peer``'s state."""

    def limit_headers() -> dict[str, str]:
        secondly = max(1, peer.interval_max // 10)
        now = time.monotonic()
        last_second = len(peer.window) - bisect.bisect_left(peer.window, now - 1)
        return {
            "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
            "X-HubSpot-RateLimit-Max": str(peer.interval_max),
            "X-HubSpot-RateLimit-Remaining": str(max(0, peer.interval_max - len(peer.window))),
            "X-HubSpot-RateLimit-Secondly": str(secondly),
            "X-HubSpot-RateLimit-Secondly-Remaining": str(max(0, secondly - last_second)),
            "X-HubSpot-RateLimit-Daily": str(peer.daily_max),
            "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, peer.daily_max - peer.daily_used)),
        }

    def answer(body: Any, status: int = 200, *, search: bool = False) -> Response:
        headers = {} if search else limit_headers()
        return JSONResponse(body, status_code=status, headers=headers)

    def refuse(status: int, category: str, message: str) -> Response:
        return JSONResponse(_error_body(category, message), status_code=status)

    async def guard(request: Request) -> Response | None:
        """Record the request, then apply queued faults, authentication and the limits."""
        path = request.url.path
        peer.requests.append((request.method, path, dict(request.headers), await request.body()))
        fault = peer._next_fault(path)
        if fault is not None:
            if isinstance(fault.body, (dict, list)):
                return JSONResponse(fault.body, fault.status, headers=fault.headers)
            return Response(fault.body or b"", fault.status, headers=fault.headers)
        if path.startswith("/oauth/"):
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expires_at = peer.access_tokens.get(token) if scheme.lower() == "bearer" else None
        if expires_at is None:
            return refuse(
                401,
                "INVALID_AUTHENTICATION",
                "Authentication credentials not found. This API supports OAuth 2.0 "
                "authentication and you can find more details at https://developers.hubspot.com/",
            )
        if expires_at < time.time():
            ago = int(time.time() - expires_at) + 1
            return refuse(
                401,
                "EXPIRED_AUTHENTICATION",
                f"The OAuth token used to make this call expired {ago} second(s) ago.",
            )
        now = time.monotonic()
        while peer.window and now - peer.window[0] >= 10:
            peer.window.popleft()
        if peer.daily_used >= peer.daily_max:
            return JSONResponse(_rate_limit_body("DAILY"), 429, headers=limit_headers())
        if len(peer.window) >= peer.interval_max:
            return JSONResponse(
                _rate_limit_body("TEN_SECONDLY_ROLLING"), 429, headers=limit_headers()
            )
        peer.window.append(now)
        peer.daily_used += 1
        return None

    def kind_of(request: Request) -> str | None:
        kind = str(request.path_params["kind"])
        return kind if kind in peer.records else None

    def view(
        record: dict[str, Any], kind: str, names: list[str] | None, with_associations: list[str]
    ) -> dict[str, Any]:
        wanted = names or list(DEFAULT_PROPERTIES.get(kind, _ENGAGEMENT_DEFAULTS))
        # Properties that do not exist are left out; existing ones without a value are null.
        known = peer.properties_of(kind) | set(record["properties"])
        shown = {name: record["properties"].get(name) for name in wanted if name in known}
        body = {key: value for key, value in record.items() if key != "associations"}
        body["properties"] = shown
        linked: dict[str, Any] = {}
        for other in with_associations:
            ids = sorted(i for k, i in record["associations"] if k == other)
            if ids:
                linked[other] = {
                    "results": [{"id": i, "type": f"{kind[:-1]}_to_{other[:-1]}"} for i in ids]
                }
        if linked:
            body["associations"] = linked
        return body

    def invalid_properties(kind: str, properties: dict[str, Any]) -> Response | None:
        unknown = [name for name in properties if name not in peer.properties_of(kind)]
        if not unknown:
            return None
        details = [
            {
                "isValid": False,
                "message": f'Property "{name}" does not exist',
                "error": "PROPERTY_DOESNT_EXIST",
                "name": name,
            }
            for name in unknown
        ]
        return refuse(
            400, "VALIDATION_ERROR", f"Property values were not valid: {json.dumps(details)}"
        )

    def duplicate(kind: str, properties: dict[str, Any], own_id: str | None) -> Response | None:
        """HubSpot refuses a value already held by another record for unique properties (and
        for contacts' e-mail)."""
        unique = [n for n, d in peer.custom_properties[kind].items() if d.get("hasUniqueValue")]
        if kind == "contacts":
            unique.append("email")
        for name in unique:
            value = properties.get(name)
            if not value:
                continue
            for existing in peer.holding(kind, name, value):
                if existing["id"] != own_id:
                    noun = "Contact" if name == "email" else "A record"
                    return refuse(
                        409, "CONFLICT", f"{noun} already exists. Existing ID: {existing['id']}"
                    )
        return None

    def listed(raw: str | None) -> list[str]:
        return [name for name in (raw or "").split(",") if name]

    def page(
        kind: str,
        records: list[dict[str, Any]],
        limit: int,
        after: str | None,
        names: list[str] | None,
        with_associations: list[str],
    ) -> tuple[list[dict[str, Any]], str | None]:
        start = int(after) if after else 0
        chunk = records[start : start + limit]
        following = str(start + limit) if start + limit < len(records) else None
        return [view(r, kind, names, with_associations) for r in chunk], following

    async def list_objects(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        kind = kind_of(request)
        if kind is None:
            return refuse(404, "OBJECT_NOT_FOUND", "Unable to infer object type")
        try:
            limit = int(request.query_params.get("limit", "10"))
            after = request.query_params.get("after")
            int(after or "0")
        except ValueError:
            return refuse(400, "VALIDATION_ERROR", "limit and after must be integers")
        if not 1 <= limit <= 100:
            return refuse(400, "VALIDATION_ERROR", "limit must be between 1 and 100")
        records = sorted(
            (r for r in peer.records[kind].values() if not r["archived"]),
            key=lambda r: int(r["id"]),
        )
        results, following = page(
            kind,
            records,
            limit,
            after,
            listed(request.query_params.get("properties")) or None,
            listed(request.query_params.get("associations")),
        )
        body: dict[str, Any] = {"results": results}
        if following:
            link = f"{peer.url}{request.url.path}?after={following}"
            body["paging"] = {"next": {"after": following, "link": link}}
        return answer(body)

    async def create_object(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        kind = kind_of(request)
        if kind is None:
            return refuse(404, "OBJECT_NOT_FOUND", "Unable to infer object type")
        payload = await request.json()
        properties = payload.get("properties")
        if not isinstance(properties, dict):
            return refuse(400, "VALIDATION_ERROR", "Invalid input JSON: properties is required")
        if (invalid := invalid_properties(kind, properties)) is not None:
            return invalid
        if (conflict := duplicate(kind, properties, None)) is not None:
            return conflict
        links: list[tuple[str, str]] = []
        for association in payload.get("associations") or []:
            target = str(association["to"]["id"])
            for kind_type in association.get("types", []):
                target_kind = ASSOCIATION_TYPES[kind].get(int(kind_type["associationTypeId"]))
                if target_kind is None or target not in peer.records[target_kind]:
                    return refuse(400, "VALIDATION_ERROR", f"Invalid association to {target}")
                links.append((target_kind, target))
        record = peer.seed(kind, {k: str(v) for k, v in properties.items() if v is not None})
        for target_kind, target in links:
            peer.associate(kind, record["id"], target_kind, target)
        return answer(view(record, kind, list(record["properties"]), []), 201)

    async def read_object(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        kind = kind_of(request)
        record = peer.records[kind].get(str(request.path_params["id"])) if kind else None
        if kind is None or record is None or record["archived"]:
            return refuse(404, "OBJECT_NOT_FOUND", "resource not found")
        return answer(
            view(
                record,
                kind,
                listed(request.query_params.get("properties")) or None,
                listed(request.query_params.get("associations")),
            )
        )

    async def update_object(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        kind = kind_of(request)
        record = peer.records[kind].get(str(request.path_params["id"])) if kind else None
        if kind is None or record is None or record["archived"]:
            return refuse(404, "OBJECT_NOT_FOUND", "resource not found")
        properties = (await request.json()).get("properties")
        if not isinstance(properties, dict):
            return refuse(400, "VALIDATION_ERROR", "Invalid input JSON: properties is required")
        if (invalid := invalid_properties(kind, properties)) is not None:
            return invalid
        if (conflict := duplicate(kind, properties, record["id"])) is not None:
            return conflict
        now = _now()
        # An empty string clears a property, as in HubSpot.
        record["properties"].update({k: str(v) for k, v in properties.items()})
        record["properties"]["lastmodifieddate"] = now
        record["properties"]["hs_lastmodifieddate"] = now
        record["updatedAt"] = now
        return answer(view(record, kind, list(record["properties"]), []))

    async def search_objects(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        kind = kind_of(request)
        if kind is None:
            return refuse(404, "OBJECT_NOT_FOUND", "Unable to infer object type")
        payload = await request.json()
        limit = int(payload.get("limit", 10))
        if not 1 <= limit <= 200:
            return refuse(400, "VALIDATION_ERROR", "limit must be between 1 and 200")
        try:
            start = int(payload.get("after") or 0)
        except ValueError:
            return refuse(400, "VALIDATION_ERROR", "after must be an integer")
        if start + limit > peer.search_cap:
            return refuse(
                400,
                "VALIDATION_ERROR",
                f"Search results are limited to {peer.search_cap} per query: "
                f"after {start} with limit {limit} pages past them",
            )

        # Each group as (property, operator, compared value) rules, read before any record.
        groups: list[list[tuple[str, Callable[[Any, Any], bool], Any]]] = []
        for group in payload.get("filterGroups") or [{}]:
            rules = []
            for rule in group.get("filters", []):
                name, op = str(rule.get("propertyName")), str(rule.get("operator"))
                compare = SEARCH_OPERATORS.get(op)
                if compare is None or (name.startswith("associations.") and op != "EQ"):
                    return refuse(
                        400, "VALIDATION_ERROR", f"operator {op} on {name} is not supported here"
                    )
                try:
                    wanted = _wanted(name, op, rule)
                except (KeyError, ValueError):
                    shown = rule.get("values" if op == "IN" else "value")
                    return refuse(400, "VALIDATION_ERROR", f"invalid value {shown!r} for {name}")
                rules.append((name, compare, wanted))
            groups.append(rules)

        def matches(record: dict[str, Any], rules: list[tuple[str, Any, Any]]) -> bool:
            for name, compare, wanted in rules:
                if name.startswith("associations."):
                    target_kind = _SINGULAR[name.split(".", 1)[1]]
                    if (target_kind, wanted) not in record["associations"]:
                        return False
                    continue
                value = _stored(record, name)
                # No value is unequal to every value, and neither less nor greater.
                if value is None or wanted is None:
                    if compare is not operator.ne or value == wanted:
                        return False
                elif not compare(value, wanted):
                    return False
            return True

        def candidates(rules: list[tuple[str, Any, Any]]) -> Iterable[dict[str, Any]]:
            """The records a group can match: those an equality on a string property names
            (through the index), else all."""
            for name, compare, wanted in rules:
                if "." in name:
                    continue
                if compare is operator.eq and isinstance(wanted, str):
                    return peer.holding(kind, name, wanted)
                if compare is SEARCH_OPERATORS["IN"] and all(isinstance(v, str) for v in wanted):
                    return [r for value in wanted for r in peer.holding(kind, name, value)]
            return peer.records[kind].values()

        found = list(
            {
                r["id"]: r
                for rules in groups
                for r in candidates(rules)
                if not r["archived"] and matches(r, rules)
            }.values()
        )
        found.sort(key=lambda r: int(r["id"]))
        for rule in reversed(payload.get("sorts") or []):
            found.sort(
                key=_by_property(str(rule["propertyName"])),
                reverse=rule.get("direction") == "DESCENDING",
            )
        results, following = page(kind, found, limit, str(start), payload.get("properties"), [])
        body: dict[str, Any] = {"total": len(found), "results": results}
        if following:
            body["paging"] = {"next": {"after": following}}
        return answer(body, search=True)

    async def associate_default(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        kind, other = str(request.path_params["kind"]), str(request.path_params["other"])
        record_id, other_id = str(request.path_params["id"]), str(request.path_params["other_id"])
        if (
            kind not in peer.records
            or other not in peer.records
            or record_id not in peer.records[kind]
            or other_id not in peer.records[other]
        ):
            return refuse(404, "OBJECT_NOT_FOUND", "resource not found")
        peer.associate(kind, record_id, other, other_id)
        return answer(
            {
                "status": "COMPLETE",
                "results": [
                    {
                        "from": {"id": record_id},
                        "to": {"id": other_id},
                        "associationSpec": {"associationCategory": "HUBSPOT_DEFINED"},
                    }
                ],
            }
        )

    async def read_property(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        kind, name = str(request.path_params["kind"]), str(request.path_params["name"])
        if kind not in peer.custom_properties:
            return refuse(404, "OBJECT_NOT_FOUND", "Unable to infer object type")
        definition = peer.custom_properties[kind].get(name)
        if definition is None and name in STANDARD_PROPERTIES[kind]:
            definition = {"name": name, "type": "string", "fieldType": "text"}
        if definition is None:
            return refuse(404, "OBJECT_NOT_FOUND", f"Unable to find property {name}")
        return answer(definition)

    async def create_property(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        kind = str(request.path_params["kind"])
        if kind not in peer.custom_properties:
            return refuse(404, "OBJECT_NOT_FOUND", "Unable to infer object type")
        definition = await request.json()
        name = str(definition.get("name") or "")
        if not name or not definition.get("label") or not definition.get("groupName"):
            return refuse(400, "VALIDATION_ERROR", "name, label and groupName are required")
        if definition["groupName"] not in peer.property_groups[kind]:
            return refuse(
                400, "VALIDATION_ERROR", f"property group {definition['groupName']} does not exist"
            )
        if name in peer.properties_of(kind):
            return refuse(
                409, "OBJECT_ALREADY_EXISTS", f"A property named '{name}' already exists."
            )
        peer.custom_properties[kind][name] = definition
        return answer(definition, 201)

    async def create_group(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        kind = str(request.path_params["kind"])
        if kind not in peer.property_groups:
            return refuse(404, "OBJECT_NOT_FOUND", "Unable to infer object type")
        group = await request.json()
        name = str(group.get("name") or "")
        if not name or not group.get("label"):
            return refuse(400, "VALIDATION_ERROR", "name and label are required")
        if name in peer.property_groups[kind]:
            return refuse(409, "OBJECT_ALREADY_EXISTS", f"A group named '{name}' already exists.")
        peer.property_groups[kind].add(name)
        return answer({"name": name, "label": group["label"], "archived": False}, 201)

    async def deal_pipelines(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        return answer({"results": PIPELINES})

    async def account_details(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        return answer(
            {
                "portalId": peer.portal_id,
                "accountType": "STANDARD",
                "timeZone": "Europe/Berlin",
                "companyCurrency": "EUR",
                "additionalCurrencies": [],
                "utcOffset": "+01:00",
                "utcOffsetMilliseconds": 3600000,
                "uiDomain": "app-eu1.hubspot.com",
                "dataHostingLocation": "eu1",
            }
        )

    async def token(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        form = await request.form()

        def bad(status: str, message: str) -> Response:
            return JSONResponse(
                {"status": status, "message": message, "correlationId": str(uuid.uuid4())}, 400
            )

        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return bad("BAD_CLIENT_ID", "missing or invalid client_id or client_secret")
        grant = form.get("grant_type")
        if grant == "refresh_token":
            refresh = str(form.get("refresh_token"))
            if refresh not in peer.refresh_tokens:
                return bad("BAD_REFRESH_TOKEN", "missing or unknown refresh token")
            access = f"oauth-{secrets.token_hex(12)}"
            peer.access_tokens[access] = time.time() + 1800
        elif grant == "authorization_code":
            code = str(form.get("code"))
            if code not in peer.authorization_codes:
                return bad("BAD_AUTH_CODE", "missing or unknown auth code")
            peer.authorization_codes.discard(code)
            access, refresh = peer.issue_oauth_tokens()
        else:
            return bad("BAD_GRANT_TYPE", "unsupported grant_type")
        return JSONResponse(
            {
                "token_type": "bearer",
                "refresh_token": refresh,
                "access_token": access,
                "expires_in": 1800,
            }
        )

    async def delete_refresh_token(request: Request) -> Response:
        if (refused := await guard(request)) is not None:
            return refused
        refresh = str(request.path_params["token"])
        if refresh not in peer.refresh_tokens:
            return refuse(404, "OBJECT_NOT_FOUND", "refresh token not found")
        peer.refresh_tokens.discard(refresh)
        return Response(status_code=204)

    return Starlette(
        routes=[
            Route("/oauth/v1/token", token, methods=["POST"]),
            Route("/oauth/v1/refresh-tokens/{token}", delete_refresh_token, methods=["DELETE"]),
            Route("/account-info/v3/details", account_details, methods=["GET"]),
            Route("/crm/v3/pipelines/deals", deal_pipelines, methods=["GET"]),
            Route("/crm/v3/properties/{kind}", create_property, methods=["POST"]),
            Route("/crm/v3/properties/{kind}/groups", create_group, methods=["POST"]),
            Route("/crm/v3/properties/{kind}/{name}", read_property, methods=["GET"]),
            Route("/crm/v3/objects/{kind}/search", search_objects, methods=["POST"]),
            Route("/crm/v3/objects/{kind}", list_objects, methods=["GET"]),
            Route("/crm/v3/objects/{kind}", create_object, methods=["POST"]),
            Route("/crm/v3/objects/{kind}/{id}", read_object, methods=["GET"]),
            Route("/crm/v3/objects/{kind}/{id}", update_object, methods=["PATCH"]),
            Route(
                "/crm/v4/objects/{kind}/{id}/associations/default/{other}/{other_id}",
                associate_default,
                methods=["PUT"],
            ),
        ]
    )


@pytest.fixture(scope="session")
def _hubspot_server() -> Iterator[tuple[Swappable, str]]:
    mount = Swappable()
    with serve(mount) as url:
        yield mount, url


@pytest.fixture
def hubspot_peer(_hubspot_server: tuple[Swappable, str]) -> HubSpotPeer:
    """A HubSpot peer with an empty account, for one test."""
    mount, url = _hubspot_server
    peer = HubSpotPeer(url=url)
    mount.app = build_app(peer)
    return peer
