"""The embedded secret store: encrypted files under ``data_dir/secrets/vault``.

Each secret is one file holding its latest version, encrypted with the data keys
(``BIZ_DATA_KEYS``); each named key is a file of key versions, encrypted the same way. It serves
one machine (``make run``); production uses Vault.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from connectors.secrets import SecretStoreError
from core.settings import Settings

_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
_NONCE = 12


class LocalSecretVault:
    """The :class:`~connectors.secrets.SecretStore` on the local disk."""

    def __init__(self, settings: Settings) -> None:
        root = (settings.data_dir / "secrets").resolve()
        self._secrets, self._keys = root / "vault", root / "vault-keys"
        self._cipher = settings.field_cipher()

    async def put(self, path: str, secret: Mapping[str, Any]) -> int:
        return await asyncio.to_thread(self._put, path, dict(secret))

    def _put(self, path: str, secret: dict[str, Any]) -> int:
        file = self._file(self._secrets, path)
        version = self._read(file)["version"] + 1 if file.exists() else 1
        sealed = self._cipher.encrypt(json.dumps(secret))
        _write_private(file, json.dumps({"version": version, "data": sealed}))
        return version

    async def get(self, path: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._get, path)

    def _get(self, path: str) -> dict[str, Any] | None:
        file = self._file(self._secrets, path)
        if not file.exists():
            return None
        secret: dict[str, Any] = json.loads(self._cipher.decrypt(self._read(file)["data"]))
        return secret

    async def delete(self, path: str) -> None:
        await asyncio.to_thread(self._file(self._secrets, path).unlink, missing_ok=True)

    async def encrypt(self, key: str, plaintext: bytes) -> str:
        versions = await asyncio.to_thread(self._key_versions, key, True)
        version = len(versions)
        nonce = os.urandom(_NONCE)
        sealed = AESGCM(versions[-1]).encrypt(nonce, plaintext, key.encode())
        return f"local:v{version}:{base64.b64encode(nonce + sealed).decode()}"

    async def decrypt(self, key: str, ciphertext: str) -> bytes:
        prefix, version, encoded = [*ciphertext.split(":", 2), "", ""][:3]
        versions = await asyncio.to_thread(self._key_versions, key, False)
        if prefix != "local" or not version[1:].isdigit() or not encoded:
            raise SecretStoreError("not a ciphertext of this store")
        index = int(version[1:]) - 1
        if not 0 <= index < len(versions):
            raise SecretStoreError(f"key {key!r} has no version {version}")
        raw = base64.b64decode(encoded)
        try:
            return AESGCM(versions[index]).decrypt(raw[:_NONCE], raw[_NONCE:], key.encode())
        except InvalidTag:
            raise SecretStoreError("the ciphertext does not belong to this key") from None

    async def rotate_key(self, key: str) -> None:
        await asyncio.to_thread(self._rotate, key)

    def _rotate(self, key: str) -> None:
        versions = self._key_versions(key, create=True)
        self._save_keys(key, [*versions, AESGCM.generate_key(bit_length=256)])

    def _key_versions(self, key: str, create: bool) -> list[bytes]:
        file = self._file(self._keys, key)
        if file.exists():
            stored: list[str] = json.loads(self._cipher.decrypt(file.read_text()))
            return [base64.b64decode(k) for k in stored]
        if not create:
            raise SecretStoreError(f"no key {key!r}")
        versions = [AESGCM.generate_key(bit_length=256)]
        self._save_keys(key, versions)
        return versions

    def _save_keys(self, key: str, versions: list[bytes]) -> None:
        encoded = json.dumps([base64.b64encode(k).decode() for k in versions])
        _write_private(self._file(self._keys, key), self._cipher.encrypt(encoded))

    @staticmethod
    def _file(folder: Path, path: str) -> Path:
        if not _PATH.match(path) or ".." in path.split("/"):
            raise SecretStoreError(f"not a secret path: {path!r}")
        return folder / f"{path}.json"

    @staticmethod
    def _read(file: Path) -> _Stored:
        content: _Stored = json.loads(file.read_text())
        return content


class _Stored(TypedDict):
    version: int
    data: str  # the secret's JSON, encrypted with the data keys


def _write_private(file: Path, content: str) -> None:
    """Replace the file atomically, readable by this user only."""
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = file.with_name(f".{file.name}.part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.replace(partial, file)
