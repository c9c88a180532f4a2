"""S3 (or any S3-compatible store) behind the object-storage port: presigned URLs for the
clients, boto3 for the checks. See :mod:`connectors.storage`."""

from __future__ import annotations

import asyncio

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from connectors.storage import SNIFF_BYTES, StoredObject, UploadTarget, content_disposition
from core.settings import Settings


class S3Storage:
    """S3 through boto3 (path-style, SigV4); boto3 blocks, so every call runs in a thread."""

    def __init__(self, settings: Settings) -> None:
        assert settings.s3_bucket is not None
        self._bucket = settings.s3_bucket
        self._ttl = settings.document_url_seconds
        secret = settings.s3_secret_access_key
        self._s3 = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    async def upload_target(self, key: str, content_type: str, size: int) -> UploadTarget:
        # Type and length are signed: real S3 refuses other uploads (moto does not check).
        params = {
            "Bucket": self._bucket,
            "Key": key,
            "ContentType": content_type,
            "ContentLength": size,
        }
        url = await asyncio.to_thread(
            self._s3.generate_presigned_url, "put_object", Params=params, ExpiresIn=self._ttl
        )
        return UploadTarget(url=url, method="PUT", headers={"Content-Type": content_type})

    async def download_url(self, key: str, filename: str, content_type: str) -> str:
        params = {
            "Bucket": self._bucket,
            "Key": key,
            "ResponseContentType": content_type,
            "ResponseContentDisposition": content_disposition(filename),
        }
        url: str = await asyncio.to_thread(
            self._s3.generate_presigned_url, "get_object", Params=params, ExpiresIn=self._ttl
        )
        return url

    async def stat(self, key: str) -> StoredObject | None:
        return await asyncio.to_thread(self._stat, key)

    def _stat(self, key: str) -> StoredObject | None:
        try:
            head = self._s3.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        size = int(head["ContentLength"])
        if size == 0:
            return StoredObject(size=0, head=b"")
        body = self._s3.get_object(Bucket=self._bucket, Key=key, Range=f"bytes=0-{SNIFF_BYTES - 1}")
        return StoredObject(size=size, head=body["Body"].read())

    async def read(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self._read, key)

    def _read(self, key: str) -> bytes | None:
        try:
            body = self._s3.get_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        data: bytes = body["Body"].read()
        return data

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._s3.delete_object, Bucket=self._bucket, Key=key)

    async def seal(self, key: str, sealed_key: str) -> StoredObject | None:
        return await asyncio.to_thread(self._seal, key, sealed_key)

    def _seal(self, key: str, sealed_key: str) -> StoredObject | None:
        try:
            self._s3.copy_object(
                Bucket=self._bucket, Key=sealed_key, CopySource={"Bucket": self._bucket, "Key": key}
            )
        except ClientError as exc:
            if not _missing(exc):
                raise
            # Sealed before (a retried check) or never uploaded.
            return self._stat(sealed_key)
        self._s3.delete_object(Bucket=self._bucket, Key=key)
        return self._stat(sealed_key)

    async def used_bytes(self, prefix: str) -> int:
        return await asyncio.to_thread(self._used_bytes, prefix)

    def _used_bytes(self, prefix: str) -> int:
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=prefix
        )
        return sum(int(item["Size"]) for page in pages for item in page.get("Contents", []))


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}
