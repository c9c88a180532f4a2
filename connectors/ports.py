"""What every port shares: pages with opaque cursors, list and sync queries, the connection check.

A port (``connectors/<kind>/__init__.py``) is a :class:`typing.Protocol`; a vendor module
implements it over the vendor's API. Callers see only these models: a cursor is a string they
pass back unchanged to get the next page, never something to parse or build.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from connectors.http import InvalidCursor, Unreadable

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a listing; ``next_cursor`` fetches the next one (None: this was the last)."""

    items: list[T]
    next_cursor: str | None = None


class ListQuery(BaseModel):
    """Where a listing starts and how long its pages are.

    A ``cursor`` continues the listing it came from, with that listing's filters; filters given
    together with a cursor are ignored.
    """

    model_config = ConfigDict(extra="forbid")

    cursor: str | None = None
    limit: int = Field(default=50, ge=1, le=100)


class SyncQuery(ListQuery):
    """A listing for sync: records changed at or after ``updated_since`` (all when None).

    A sync keeps the largest ``updated_at`` it saw as the next run's ``updated_since``.
    """

    updated_since: datetime | None = None


class SyncPage(Page[T], Generic[T]):
    """A page of a sync listing: the records that parsed, and (``unreadable``) those the
    connector could not read, by id and reason, so a sync skips them and reads on."""

    unreadable: list[Unreadable] = Field(default_factory=list)


class AccountInfo(BaseModel):
    """Who the credentials act as at the vendor, as found by :meth:`Connector.verify`."""

    account_id: str
    name: str
    detail: dict[str, str] = {}


class Connector(Protocol):
    """What every connector does besides its port's methods."""

    async def verify(self) -> AccountInfo:
        """Check the settings and credentials with one cheap authenticated call.

        Raises :class:`~connectors.http.AuthFailed` for bad credentials and the other
        :class:`~connectors.http.ConnectorError`\\ s for everything else.
        """
        ...

    async def revoke(self) -> bool:
        """Revoke the credentials at the vendor; False when the vendor offers no way to."""
        ...


def encode_cursor(state: dict[str, Any]) -> str:
    """An opaque cursor carrying a connector's own listing state."""
    raw = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, vendor: str) -> dict[str, Any]:
    """The state inside a cursor from :func:`encode_cursor`; anything else is refused."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        state = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidCursor(f"not a {vendor} cursor", vendor=vendor) from None
    if not isinstance(state, dict):
        raise InvalidCursor(f"not a {vendor} cursor", vendor=vendor)
    return state
