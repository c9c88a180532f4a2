"""The WordPress REST API's conventions, shared by the WordPress and WooCommerce connectors.

Both speak through ``/wp-json/<namespace>/``: errors are ``{"code", "message", "data":
{"status"}}``, lists are paged with ``page``/``per_page`` (at most 100) and the total number of
pages comes back in ``X-WP-TotalPages``
(https://developer.wordpress.org/rest-api/using-the-rest-api/pagination/,
https://developer.wordpress.org/rest-api/using-the-rest-api/global-parameters/).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import httpx

from connectors.http import SchemaMismatch, VendorRejected, error_for_status, json_body, send

MAX_PER_PAGE = 100
#: What ``wp_insert_user`` refuses, which the REST API answers with status 500: the request is
#: wrong, trying again changes nothing.
_REFUSALS_AS_500 = frozenset(
    {
        "existing_user_login",
        "existing_user_email",
        "invalid_username",
        "user_login_too_long",
        "user_nicename_too_long",
        "empty_user_login",
    }
)


class WPRest:
    """Calls to one site's ``/wp-json/`` with one set of credentials."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        site_url: str,
        username: str,
        password: str,
        vendor: str,
        max_bytes: int,
    ) -> None:
        self.http = http
        self.root = f"{site_url}/wp-json/"
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._authorization = f"Basic {token}"
        self.vendor = vendor
        self.max_bytes = max_bytes

    async def call(
        self,
        method: str,
        route: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
        data: Mapping[str, str] | None = None,
        authenticated: bool = True,
    ) -> httpx.Response:
        """One request to ``route`` (``wp/v2/posts``); a non-2xx answer raises its typed
        error with the vendor's message and code."""
        request = self.http.build_request(
            method,
            self.root + route,
            params=_params(params),
            json=json,
            files=files,
            data=data,
            headers={"Authorization": self._authorization} if authenticated else None,
        )
        response = await send(self.http, request, vendor=self.vendor, max_bytes=self.max_bytes)
        if response.status_code >= 300:
            reason, code, details = _error(response)
            error = error_for_status(response, vendor=self.vendor, reason=reason, code=code)
            if code in _REFUSALS_AS_500:
                error = VendorRejected(
                    f"{self.vendor} refused it: {reason}",
                    vendor=self.vendor,
                    status=response.status_code,
                    reason=reason or "",
                    code=code,
                )
            if isinstance(error, VendorRejected) and details is not None:
                error.data = details
            if error is not None:
                raise error
        return response

    async def get_json(self, route: str, **params: Any) -> Any:
        return json_body(await self.call("GET", route, params=params), vendor=self.vendor)

    async def page(self, route: str, *, page: int, per_page: int, **params: Any) -> tuple[Any, int]:
        """One page of a collection and the number of pages (``X-WP-TotalPages``)."""
        response = await self.call(
            "GET", route, params={**params, "page": page, "per_page": min(per_page, MAX_PER_PAGE)}
        )
        total = response.headers.get("x-wp-totalpages")
        if total is None or not total.isdigit():
            raise SchemaMismatch(
                f"{self.vendor} sent no X-WP-TotalPages header for {route}",
                vendor=self.vendor,
                field="headers.X-WP-TotalPages",
            )
        return json_body(response, vendor=self.vendor), int(total)


def _params(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if params is None:
        return None
    out: dict[str, str] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            out[key] = ",".join(str(v) for v in value)
        else:
            out[key] = str(value)
    return out


def _error(response: httpx.Response) -> tuple[str | None, str | None, Mapping[str, Any] | None]:
    """The message, code and data of a WordPress error body, when the body is one."""
    try:
        body = response.json()
    except ValueError:
        return None, None, None
    if not isinstance(body, dict):
        return None, None, None
    message = body.get("message")
    code = body.get("code")
    data = body.get("data")
    return (
        message if isinstance(message, str) else None,
        code if isinstance(code, str) else None,
        data if isinstance(data, dict) else None,
    )
