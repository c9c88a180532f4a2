"""The embedded object store's signed upload and download URLs (S3 serves its own).

The URL token is the authorisation, like a presigned S3 URL: no bearer token is needed.
These routes enforce their own size limit (the one signed into the URL), not the API's
request-body cap.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse

from api.deps import StorageDep
from connectors.storage import InvalidObjectUrl, LocalStorage, ObjectTooLarge
from core.errors import Forbidden, NotFound, PayloadTooLarge

router = APIRouter(prefix=LocalStorage.URL_PATH.rstrip("/"), tags=["storage"])


async def local_storage(storage: StorageDep) -> LocalStorage:
    if not isinstance(storage, LocalStorage):
        raise NotFound("Objects are stored in S3; use the presigned URL.")
    return storage


LocalStorageDep = Annotated[LocalStorage, Depends(local_storage)]


@router.put("/{token}", summary="Upload an object through a signed URL")
async def upload_object(token: str, request: Request, storage: LocalStorageDep) -> Response:
    """Store the request body under the key the URL grants, with the signed content type."""
    try:
        grant = storage.verify(token, "put")
    except InvalidObjectUrl as exc:
        raise Forbidden(str(exc)) from None
    sent_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if sent_type != grant.content_type:
        raise Forbidden(f"The upload must be sent as {grant.content_type}.")
    try:
        await storage.write(grant, request.stream())
    except ObjectTooLarge as exc:
        raise PayloadTooLarge(str(exc)) from None
    return Response(status_code=200)


@router.get("/{token}", summary="Download an object through a signed URL")
async def download_object(token: str, storage: LocalStorageDep) -> FileResponse:
    """The object the URL grants, as an attachment."""
    try:
        grant = storage.verify(token, "get")
    except InvalidObjectUrl as exc:
        raise Forbidden(str(exc)) from None
    path = storage.path_of(grant.key)
    if not path.is_file():
        raise NotFound("The object does not exist.")
    return FileResponse(
        path,
        media_type=grant.content_type,
        filename=grant.filename,
        content_disposition_type="attachment",
    )
