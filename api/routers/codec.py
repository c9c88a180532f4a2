"""Remote codec endpoint for the Temporal UI: operators read decrypted payloads.

It decrypts history, so it answers only ``super_admin`` tokens, unless ``BIZ_CODEC_SERVER_OPEN``
is set — which only ``bizosaas dev`` does, on loopback, for the local UI.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from api.deps import SessionDep, SettingsDep, TemporalDep, bearer, current_principal
from core.errors import Forbidden, Unprocessable
from models.user import Role

router = APIRouter(prefix="/codec", tags=["operators"], include_in_schema=False)


async def _operator(
    settings: SettingsDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    if settings.codec_server_open:
        return
    principal = await current_principal(settings, session, credentials)
    if principal.role != Role.SUPER_ADMIN:
        raise Forbidden("Only platform administrators may decode workflow payloads.")


async def _payloads(request: Request) -> Payloads:
    try:
        return json_format.Parse(await request.body(), Payloads())
    except json_format.ParseError as exc:
        raise Unprocessable(f"The body is not a Payloads JSON document: {exc}") from None


def _json(payloads: list[Payload]) -> Response:
    message = Payloads(payloads=payloads)
    return Response(json_format.MessageToJson(message), media_type="application/json")


@router.post("/decode", dependencies=[Depends(_operator)])
async def decode(request: Request, client: TemporalDep) -> Response:
    """Decrypt payloads for display."""
    codec = client.data_converter.payload_codec
    assert codec is not None
    return _json(list(await codec.decode((await _payloads(request)).payloads)))


@router.post("/encode", dependencies=[Depends(_operator)])
async def encode(request: Request, client: TemporalDep) -> Response:
    """Encrypt payloads the UI sends (signals and queries started from the UI)."""
    codec = client.data_converter.payload_codec
    assert codec is not None
    return _json(list(await codec.encode((await _payloads(request)).payloads)))
