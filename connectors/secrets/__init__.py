"""The secret store port: tenants' credentials and keys, never in workflow history.

Workflows carry a connection id; activities resolve it to a path here and read the secret.
Two implementations: Vault (or OpenBao) through hvac in production (KV v2 for secrets, transit
for keys), and an encrypted local store, the embedded default.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from core.settings import Settings


class SecretStoreError(RuntimeError):
    """The store refused or failed an operation (not: a secret that does not exist)."""


class SecretStore(Protocol):
    """Versioned secrets by path, and named encryption keys that never leave the store."""

    async def put(self, path: str, secret: Mapping[str, Any]) -> int:
        """Write a new version of the secret at ``path``; returns its version number."""
        ...

    async def get(self, path: str) -> dict[str, Any] | None:
        """The latest version, or ``None`` when there is none."""
        ...

    async def delete(self, path: str) -> None:
        """Remove every version (nothing happens when there is none)."""
        ...

    async def encrypt(self, key: str, plaintext: bytes) -> str:
        """Encrypt with the named key (created on first use); the ciphertext names its version."""
        ...

    async def decrypt(self, key: str, ciphertext: str) -> bytes:
        """Decrypt a ciphertext of any version of the named key."""
        ...

    async def rotate_key(self, key: str) -> None:
        """Start a new version of the named key; older ciphertexts still decrypt."""
        ...


def connection_path(tenant_id: uuid.UUID, connection_id: uuid.UUID) -> str:
    """Where a connection's credentials live."""
    return f"tenants/{tenant_id}/connections/{connection_id}"


def staged_path(tenant_id: uuid.UUID, connection_id: uuid.UUID) -> str:
    """Where the API leaves new credentials for the connection workflow to check: they become
    the connection's only once the vendor accepted them."""
    return f"{connection_path(tenant_id, connection_id)}/staged"


def model_provider_path(tenant_id: uuid.UUID) -> str:
    """Where a tenant's model provider lives: its base URL, default model and own API key."""
    return f"tenants/{tenant_id}/model-provider"


def tenant_key(tenant_id: uuid.UUID) -> str:
    """The name of a tenant's own encryption key."""
    return f"tenant-{tenant_id}"


def secret_store_from_settings(settings: Settings) -> SecretStore:
    """Vault when ``BIZ_VAULT_ADDR`` is set, else the encrypted local store."""
    if settings.vault_addr is not None:
        from connectors.secrets.vault import VaultSecretStore

        return VaultSecretStore(settings)
    from connectors.secrets.local import LocalSecretVault

    return LocalSecretVault(settings)
