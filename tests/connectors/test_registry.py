"""The connector registry: every connector, its connection forms, and the shared plumbing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaValidationError
from pydantic import SecretStr, ValidationError

from connectors.http import (
    AuthFailed,
    RateLimited,
    UnsafeURL,
    VendorNotFound,
    VendorRejected,
    VendorUnavailable,
    blocked_reason,
    check_base_url,
    connector_client,
    error_for_status,
    parse_retry_after,
)
from connectors.ports import decode_cursor, encode_cursor
from connectors.registry import (
    ApplicationPasswordCredentials,
    ConnectorContext,
    UnknownConnector,
    all_specs,
    dump_credentials,
    get_spec,
    open_connector,
    port_methods,
)

SIX = {"wordpress", "woocommerce", "shopify", "hubspot", "zoho_crm", "ga4"}


def test_the_registry_lists_the_six_connectors_of_every_kind() -> None:
    specs = all_specs()
    assert {spec.id for spec in specs} == SIX
    assert {spec.kind for spec in specs} == {"cms", "crm", "commerce", "analytics"}
    assert len({spec.id for spec in specs}) == len(specs)


@pytest.mark.parametrize("spec_id", sorted(SIX))
def test_every_connection_form_is_a_valid_json_schema(spec_id: str) -> None:
    spec = get_spec(spec_id)
    description = spec.describe()
    json.dumps(description)  # the API serves it as is
    assert set(description["forms"]) == set(spec.auth_kinds)
    for kind, form in description["forms"].items():
        Draft202012Validator.check_schema(form)
        assert form["type"] == "object"
        assert set(spec.settings_model.model_fields) <= set(form["properties"])
        if kind == "oauth2_authorization_code":
            # Tokens come from the provider's consent screen, never from the form.
            assert set(form["properties"]) == set(spec.settings_model.model_fields)
            assert spec.oauth is not None
            assert spec.oauth.authorize_url
            assert spec.oauth.token_url
            continue
        secrets = [
            name
            for name, field in spec.credentials_model(kind).model_fields.items()
            if field.annotation in (SecretStr, SecretStr | None)
        ]
        assert secrets, f"{spec_id}/{kind} has no secret field"
        for name in secrets:
            assert form["properties"][name]["writeOnly"] is True
            assert form["properties"][name]["format"] == "password"
    assert set(description["capabilities"]) <= port_methods(spec.kind)
    assert description["rate_limit"]["requests"] >= 1


@pytest.mark.parametrize(
    ("spec_id", "form"),
    [
        (
            "wordpress",
            {
                "site_url": "https://blog.example.com/",
                "username": "editor",
                "application_password": "abcd efgh ijkl mnop qrst uvwx",
            },
        ),
        (
            "woocommerce",
            {"store_url": "https://shop.example.com", "api_key": "ck_1", "api_secret": "cs_1"},
        ),
        ("shopify", {"store_url": "https://x.myshopify.com", "api_key": "shpat_1"}),
    ],
)
async def test_a_filled_form_validates_and_opens_a_connector_with_every_capability(
    spec_id: str, form: dict[str, str]
) -> None:
    spec = get_spec(spec_id)
    Draft202012Validator(spec.form_schema()).validate(form)
    settings, credentials = spec.split_form(form)
    assert credentials is not None
    assert "abcd" not in repr(credentials)
    async with httpx.AsyncClient() as http:
        connector = open_connector(spec_id, settings, credentials, http)
        for method in spec.supported | {"verify", "revoke"}:
            assert callable(getattr(connector, method)), method
        # Stored as JSON data, reopened from it.
        stored = json.loads(json.dumps(dump_credentials(credentials)))
        open_connector(spec_id, settings.model_dump(), stored, http)
    with pytest.raises(SchemaValidationError):
        Draft202012Validator(spec.form_schema()).validate({**form, "unexpected": "x"})
    with pytest.raises(ValidationError):
        spec.split_form({**form, "unexpected": "x"})


def test_unknown_connector() -> None:
    with pytest.raises(UnknownConnector):
        get_spec("myspace")


def test_credentials_reveal_secrets_only_when_dumped_for_the_store() -> None:
    credentials = ApplicationPasswordCredentials(
        username="editor", application_password=SecretStr("very secret")
    )
    assert "very secret" not in repr(credentials)
    assert "very secret" not in credentials.model_dump_json()
    assert dump_credentials(credentials) == {
        "username": "editor",
        "application_password": "very secret",
    }


async def test_settings_are_refused_before_any_call() -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(ValidationError):
            open_connector("wordpress", {"site_url": "ftp://x"}, {}, http)
        with pytest.raises(UnsafeURL):
            open_connector(
                "wordpress",
                {"site_url": "https://169.254.169.254"},
                {"username": "u", "application_password": "p"},
                http,
                ConnectorContext(),
            )


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("100.64.0.1", "private"),  # carrier-grade NAT
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address to refuse, not to bind
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of the metadata address
        ("2002:0a00:0001::1", "private"),  # 6to4 of 10.0.0.1
        ("93.184.215.14", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_blocked_addresses(address: str, reason: str | None) -> None:
    assert blocked_reason(address) == reason


@pytest.mark.parametrize(
    "url",
    [
        "http://blog.example.com",  # credentials must not travel in clear
        "https://localhost",
        "https://127.0.0.1:8443",
        "https://[::1]",
        "https://user:pw@blog.example.com",
        "https://blog.example.com/?a=1",
        "gopher://blog.example.com",
        "https://blog.example.com:99999",
    ],
)
def test_base_urls_refused_in_production(url: str) -> None:
    with pytest.raises(UnsafeURL):
        check_base_url(url, allow_private=False)


def test_base_urls_allowed() -> None:
    assert check_base_url("https://blog.example.com/", allow_private=False) == (
        "https://blog.example.com"
    )
    assert check_base_url("http://127.0.0.1:8080", allow_private=True) == "http://127.0.0.1:8080"


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert parse_retry_after(httpx.Headers({"Retry-After": "7"}), now=now) == 7
    assert parse_retry_after(
        httpx.Headers({"Retry-After": "Thu, 01 Jan 2026 00:00:30 GMT"}), now=now
    ) == pytest.approx(30)
    assert parse_retry_after(httpx.Headers({"X-RateLimit-Reset": "5"}), now=now) == 5
    assert parse_retry_after(httpx.Headers({"X-RateLimit-Reset": str(now + 12)}), now=now) == 12
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"}), now=now) is None
    assert parse_retry_after(httpx.Headers({}), now=now) is None


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthFailed),
        (403, AuthFailed),
        (400, VendorRejected),
        (404, VendorNotFound),
        (409, VendorRejected),
        (429, RateLimited),
        (500, VendorUnavailable),
        (503, VendorUnavailable),
    ],
)
def test_status_mapping(status: int, error: type[Exception]) -> None:
    response = httpx.Response(status, text="x" * 5000)
    found = error_for_status(response, vendor="Vendor")
    assert type(found) is error
    assert len(str(found)) < 600  # a bounded excerpt of the body, not all of it
    assert error_for_status(httpx.Response(204), vendor="Vendor") is None


def test_redirects_are_not_followed_but_reported() -> None:
    response = httpx.Response(301, headers={"Location": "https://www.example.com/wp-json/"})
    error = error_for_status(response, vendor="WordPress")
    assert isinstance(error, VendorRejected)
    assert error.code == "redirect"
    assert "https://www.example.com/wp-json/" in str(error)
    assert connector_client(allow_private=True).follow_redirects is False


def test_cursors_are_opaque_and_checked() -> None:
    cursor = encode_cursor({"page": 3, "since": None})
    assert decode_cursor(cursor, vendor="V") == {"page": 3, "since": None}
    from connectors.http import InvalidCursor

    for bad in ("%%%", encode_cursor({"page": 1})[:-3] + "!!", "WzEsMl0"):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad, vendor="V")
