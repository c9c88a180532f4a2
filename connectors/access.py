"""Open a tenant's connection: its stored credentials, this platform's OAuth application, and
refreshed tokens written back to the secret store. The one way activities and live reads reach
a connected system."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx

from connectors import registry
from connectors.http import AuthFailed
from connectors.oauth import oauth_client
from connectors.pacing import Pacer
from connectors.ports import Connector
from connectors.secrets import SecretStore, connection_path


@asynccontextmanager
async def open_connection(
    settings: Any,
    store: SecretStore,
    *,
    tenant_id: uuid.UUID,
    connection_id: uuid.UUID,
    connector_id: str,
    auth_kind: str,
    connection_settings: dict[str, Any],
    credentials_path: str | None = None,
    pacer: Pacer | None = None,
    max_wait: float | None = None,
) -> AsyncIterator[Connector]:
    """The connection's port for the block (its HTTP client closed after).

    ``credentials_path`` reads other credentials than the connection's (staged ones being
    checked); tokens a connector refreshes are written back where they were read. With a
    ``pacer``, every request waits for the connection's slot in its rate limit (at most
    ``max_wait`` seconds: see :class:`~connectors.pacing.Pacer`).
    """
    path = credentials_path or connection_path(tenant_id, connection_id)
    credentials = await store.get(path)
    if credentials is None:
        raise AuthFailed("No credentials are stored for this connection.", vendor=connector_id)
    spec = registry.get_spec(connector_id)

    async def keep(refreshed: registry.Credentials) -> None:
        await store.put(path, registry.dump_credentials(refreshed))

    context = registry.context_from_settings(
        settings, oauth_client=oauth_client(settings, spec), on_credentials_refreshed=keep
    )
    async with registry.client_from_settings(settings) as http:
        if pacer is not None:
            limit = registry.rate_limit(settings, connector_id)

            async def pace(request: httpx.Request) -> None:
                await pacer.wait(connection_id, limit, max_wait)

            http.event_hooks["request"] = [*http.event_hooks["request"], pace]
        yield registry.open_connector(
            connector_id,
            connection_settings,
            credentials,
            http,
            context,
            auth_kind=cast(registry.AuthKind, auth_kind),
        )
