"""Vault (or OpenBao) through hvac: KV v2 for secrets, transit for keys.

hvac is synchronous, so every call runs in a thread. Authentication is a token
(``BIZ_VAULT_TOKEN``) or AppRole (``BIZ_VAULT_ROLE_ID`` and ``BIZ_VAULT_SECRET_ID``); an expired
token is renewed by logging in again.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import hvac
from hvac.exceptions import Forbidden, InvalidPath, Unauthorized, VaultError

from connectors.secrets import SecretStoreError
from core.settings import Settings

T = TypeVar("T")


class VaultSecretStore:
    """The :class:`~connectors.secrets.SecretStore` on a Vault-API server."""

    def __init__(self, settings: Settings) -> None:
        assert settings.vault_addr is not None
        self._settings = settings
        self._kv = settings.vault_kv_mount
        self._transit = settings.vault_transit_mount
        self._client = hvac.Client(
            url=settings.vault_addr, namespace=settings.vault_namespace, timeout=10
        )
        self._login_lock = threading.Lock()
        self._login()

    def _login(self) -> None:
        settings = self._settings
        with self._login_lock:
            if settings.vault_role_id and settings.vault_secret_id:
                self._client.auth.approle.login(
                    role_id=settings.vault_role_id,
                    secret_id=settings.vault_secret_id.get_secret_value(),
                )
            elif settings.vault_token is not None:
                self._client.token = settings.vault_token.get_secret_value()

    async def _call(self, operation: Callable[[], T]) -> T:
        return await asyncio.to_thread(self._with_login, operation)

    def _with_login(self, operation: Callable[[], T]) -> T:
        try:
            try:
                return operation()
            except (Unauthorized, Forbidden):
                if not self._settings.vault_role_id:
                    raise
                self._login()  # an AppRole token expired: log in once more
                return operation()
        except InvalidPath:
            raise
        except VaultError as exc:
            # Vault's message names the path and the reason, never a secret value.
            raise SecretStoreError(f"Vault refused the operation: {exc}") from None

    async def put(self, path: str, secret: Mapping[str, Any]) -> int:
        written: dict[str, Any] = await self._call(
            lambda: self._client.secrets.kv.v2.create_or_update_secret(
                path=path, secret=dict(secret), mount_point=self._kv
            )
        )
        return int(written["data"]["version"])

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            read: dict[str, Any] = await self._call(
                lambda: self._client.secrets.kv.v2.read_secret_version(
                    path=path, mount_point=self._kv, raise_on_deleted_version=True
                )
            )
        except InvalidPath:
            return None
        secret: dict[str, Any] = read["data"]["data"]
        return secret

    async def delete(self, path: str) -> None:
        try:
            await self._call(
                lambda: self._client.secrets.kv.v2.delete_metadata_and_all_versions(
                    path=path, mount_point=self._kv
                )
            )
        except InvalidPath:
            return

    async def encrypt(self, key: str, plaintext: bytes) -> str:
        encoded = base64.b64encode(plaintext).decode()
        sealed: dict[str, Any] = await self._call(
            lambda: self._client.secrets.transit.encrypt_data(
                name=key, plaintext=encoded, mount_point=self._transit
            )
        )
        return str(sealed["data"]["ciphertext"])

    async def decrypt(self, key: str, ciphertext: str) -> bytes:
        opened: dict[str, Any] = await self._call(
            lambda: self._client.secrets.transit.decrypt_data(
                name=key, ciphertext=ciphertext, mount_point=self._transit
            )
        )
        return base64.b64decode(opened["data"]["plaintext"])

    async def rotate_key(self, key: str) -> None:
        await self._call(
            lambda: self._client.secrets.transit.rotate_key(name=key, mount_point=self._transit)
        )
