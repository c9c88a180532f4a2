"""The object-storage port: where uploaded files live.

Production sets ``BIZ_S3_BUCKET`` (AWS S3 or any S3-compatible store): clients upload and
download through presigned URLs. The embedded default keeps files under ``data_dir/objects``,
and this API serves them through URLs it signs itself (``api/routers/storage.py``).
Neither trusts what the client declared: callers check what :meth:`ObjectStorage.stat` finds.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from core.settings import Settings

# Enough leading bytes to recognise every accepted file type.
SNIFF_BYTES = 16
_MAGIC = (
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
)
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


def sniff_type(head: bytes) -> str | None:
    """The content type the file's magic bytes show (PDF, PNG or JPEG), else ``None``."""
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def upload_problem(declared_type: str, stored: StoredObject, max_bytes: int) -> str | None:
    """Why an uploaded file may not be kept (empty, too large, not the type announced by its
    magic bytes), or ``None`` when it may."""
    if stored.size == 0:
        return "The uploaded file is empty."
    if stored.size > max_bytes:
        return f"The uploaded file has {stored.size} bytes; at most {max_bytes} are allowed."
    found = sniff_type(stored.head)
    if found is None:
        return "The uploaded file is not a PDF, PNG or JPEG file."
    if found != declared_type:
        return f"The uploaded file is {found}, not {declared_type} as announced."
    return None


@dataclass(frozen=True)
class UploadTarget:
    """Where and how the client sends the bytes."""

    url: str
    method: str
    headers: dict[str, str]


@dataclass(frozen=True)
class StoredObject:
    """What is really stored under a key: its size and first bytes."""

    size: int
    head: bytes


class ObjectStorage(Protocol):
    """Upload and download by short-lived URL; inspect and remove by key."""

    async def upload_target(self, key: str, content_type: str, size: int) -> UploadTarget: ...

    async def download_url(self, key: str, filename: str, content_type: str) -> str: ...

    async def stat(self, key: str) -> StoredObject | None: ...

    async def read(self, key: str) -> bytes | None:
        """The object's bytes (callers bound its size first); ``None`` when absent."""
        ...

    async def delete(self, key: str) -> None: ...

    async def seal(self, key: str, sealed_key: str) -> StoredObject | None:
        """Move an upload to ``sealed_key``, a key no upload URL was ever issued for, and
        describe it there; ``None`` when nothing was uploaded. Checked bytes stay the bytes
        that were checked: a later PUT to the old URL cannot reach them."""
        ...

    async def used_bytes(self, prefix: str) -> int:
        """The bytes stored under the keys beginning with ``prefix`` (a folder: ends in /)."""
        ...


class InvalidObjectUrl(ValueError):
    """A local-store URL that is forged, expired, or meant for another operation."""


class ObjectTooLarge(ValueError):
    """An upload to the local store that outgrew the size its URL allows."""


@dataclass(frozen=True)
class ObjectGrant:
    """What a signed local-store URL allows."""

    op: Literal["put", "get"]
    key: str
    content_type: str
    max_bytes: int
    filename: str | None


class LocalStorage:
    """Files under ``data_dir/objects``, up- and downloaded through this API by signed URLs."""

    URL_PATH = "/api/v1/storage/"

    def __init__(self, settings: Settings) -> None:
        self._root = (settings.data_dir / "objects").resolve()
        self._base_url = settings.public_api_url.rstrip("/")
        self._ttl = settings.document_url_seconds
        self._key = hmac.digest(
            settings.jwt_signing_key().encode(), b"local-object-storage", "sha256"
        )

    async def upload_target(self, key: str, content_type: str, size: int) -> UploadTarget:
        token = self._sign(ObjectGrant("put", key, content_type, size, None))
        return UploadTarget(
            url=self._base_url + self.URL_PATH + token,
            method="PUT",
            headers={"Content-Type": content_type},
        )

    async def download_url(self, key: str, filename: str, content_type: str) -> str:
        token = self._sign(ObjectGrant("get", key, content_type, 0, filename))
        return self._base_url + self.URL_PATH + token

    async def stat(self, key: str) -> StoredObject | None:
        return await asyncio.to_thread(self._stat, key)

    def _stat(self, key: str) -> StoredObject | None:
        path = self.path_of(key)
        if not path.is_file():
            return None
        with path.open("rb") as file:
            return StoredObject(size=path.stat().st_size, head=file.read(SNIFF_BYTES))

    async def read(self, key: str) -> bytes | None:
        path = self.path_of(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self.path_of(key).unlink, missing_ok=True)

    async def seal(self, key: str, sealed_key: str) -> StoredObject | None:
        return await asyncio.to_thread(self._seal, key, sealed_key)

    def _seal(self, key: str, sealed_key: str) -> StoredObject | None:
        source, target = self.path_of(key), self.path_of(sealed_key)
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)  # atomic: a concurrent upload lands beside it, unread
        return self._stat(sealed_key)

    async def used_bytes(self, prefix: str) -> int:
        return await asyncio.to_thread(self._used_bytes, prefix)

    def _used_bytes(self, prefix: str) -> int:
        folder = self.path_of(prefix.rstrip("/"))
        # Uploads under way (hidden ``.part`` files) are not stored yet.
        return sum(
            path.stat().st_size
            for path in folder.rglob("*")
            if path.is_file() and not path.name.startswith(".")
        )

    async def write(self, grant: ObjectGrant, chunks: AsyncIterator[bytes]) -> int:
        """Store an upload, refusing it once it exceeds the grant's size; returns its size."""
        path = self.path_of(grant.key)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        written = 0
        try:
            with partial.open("wb") as file:
                async for chunk in chunks:
                    written += len(chunk)
                    if written > grant.max_bytes:
                        raise ObjectTooLarge(f"the upload exceeds {grant.max_bytes} bytes")
                    await asyncio.to_thread(file.write, chunk)
            await asyncio.to_thread(os.replace, partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return written

    def path_of(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key.split("/"):
            raise InvalidObjectUrl(f"not an object key: {key!r}")
        return self._root / key

    def verify(self, token: str, op: Literal["put", "get"]) -> ObjectGrant:
        """The grant a URL token carries, if its signature holds and it has not expired."""
        try:
            body, signature = token.split(".")
            expected = _b64(hmac.digest(self._key, body.encode(), "sha256"))
            if not hmac.compare_digest(signature, expected):
                raise InvalidObjectUrl("the URL signature does not match")
            claims: dict[str, Any] = json.loads(_unb64(body))
        except (ValueError, TypeError) as exc:
            raise InvalidObjectUrl(str(exc) or "malformed URL token") from None
        if claims.get("op") != op:
            raise InvalidObjectUrl(f"this URL does not allow {op}")
        if int(claims.get("exp", 0)) < time.time():
            raise InvalidObjectUrl("the URL has expired")
        return ObjectGrant(op, claims["key"], claims["ct"], int(claims["max"]), claims.get("fn"))

    def _sign(self, grant: ObjectGrant) -> str:
        claims = {
            "op": grant.op,
            "key": grant.key,
            "ct": grant.content_type,
            "max": grant.max_bytes,
            "fn": grant.filename,
            "exp": int(time.time()) + self._ttl,
        }
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{body}.{_b64(hmac.digest(self._key, body.encode(), 'sha256'))}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def content_disposition(filename: str) -> str:
    """A download's ``Content-Disposition``: an attachment with an ASCII-safe name."""
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "'")
    return f'attachment; filename="{ascii_name}"'


def storage_from_settings(settings: Settings) -> ObjectStorage:
    """S3 when ``BIZ_S3_BUCKET`` is set, else the local store under ``data_dir`` (boto3 is
    imported only for S3: it is the API's heaviest import)."""
    if settings.s3_bucket:
        from connectors.s3 import S3Storage

        return S3Storage(settings)
    return LocalStorage(settings)
