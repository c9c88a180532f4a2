"""Remote codec endpoint for the Temporal UI: operators read decrypted payloads.

It decrypts history, so it answers only operators: a ``super_admin`` access token of this API,
or, when ``BIZ_CODEC_OIDC_ISSUER`` is set, the token the Temporal UI's own sign-in got from that
issuer (signature against the issuer's JWKS, issuer, audience, expiry and required claims
checked). ``BIZ_CODEC_SERVER_OPEN`` opens it, which only ``bizosaas dev`` does, on loopback, for
the local UI.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import Annotated, Any

import httpx
import jwt
from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from api.deps import SessionDep, SettingsDep, TemporalDep, bearer, current_principal
from core.codec import CodecError, decode_for_display
from core.errors import Forbidden, Problem, Unauthorized, Unprocessable
from core.settings import Settings
from models.user import Role

router = APIRouter(prefix="/codec", tags=["operators"], include_in_schema=False)

# How long the issuer's key set is trusted before it is fetched again, and the least time
# between the refetches that an unknown key id forces (a flood of forged key ids must not turn
# into a flood of requests to the issuer).
_JWKS_LIFESPAN_SECONDS = 300
_JWKS_COOLDOWN_SECONDS = 30
_ISSUER_TIMEOUT_SECONDS = 5


class UndecodablePayload(Problem):
    status, slug, title = 422, "undecodable-payload", "The payload cannot be decoded"


class IssuerUnavailable(Problem):
    status, slug, title = 503, "issuer-unavailable", "The token issuer cannot be reached"


class IssuerKeys:
    """The signing keys of one OIDC issuer, found through its discovery document.

    The discovery document is read once (with httpx, on the event loop); the key set is cached
    by PyJWT's client, whose blocking fetches run in a worker thread.
    """

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self._jwks: jwt.PyJWKClient | None = None

    async def signing_key(self, token: str) -> jwt.PyJWK:
        jwks = self._jwks or await self._discover()
        try:
            return await asyncio.to_thread(_key_for, jwks, token)
        except jwt.PyJWKClientConnectionError:
            raise IssuerUnavailable(f"The key set of {self.issuer} cannot be fetched.") from None

    async def _discover(self) -> jwt.PyJWKClient:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            async with httpx.AsyncClient(timeout=_ISSUER_TIMEOUT_SECONDS) as http:
                response = await http.get(url)
                response.raise_for_status()
                document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise IssuerUnavailable(f"The discovery document {url} cannot be read: {exc}") from None
        if not isinstance(document, dict):
            document = {}
        jwks_uri = document.get("jwks_uri")
        # OpenID Connect Discovery 1.0, section 4.3: the document must name the issuer asked.
        if document.get("issuer") != self.issuer or not isinstance(jwks_uri, str):
            raise IssuerUnavailable(f"{url} is not the discovery document of {self.issuer}.")
        self._jwks = jwt.PyJWKClient(
            jwks_uri,
            lifespan=_JWKS_LIFESPAN_SECONDS,
            timeout=_ISSUER_TIMEOUT_SECONDS,
            cooldown_duration=_JWKS_COOLDOWN_SECONDS,
        )
        return self._jwks


def _key_for(jwks: jwt.PyJWKClient, token: str) -> jwt.PyJWK:
    """The key the token names; a token without a key id (RFC 7515 makes it optional) can only
    be from an issuer that has a single signing key."""
    kid = jwt.get_unverified_header(token).get("kid")
    if kid is not None:
        return jwks.get_signing_key(kid)
    keys = jwks.get_signing_keys()
    if len(keys) != 1:
        raise jwt.PyJWKClientError("the token names no key id and the issuer has several keys")
    return keys[0]


@lru_cache(maxsize=8)
def issuer_keys(issuer: str) -> IssuerKeys:
    """One key cache per issuer for the process, shared by every request."""
    return IssuerKeys(issuer)


def _claimed_issuer(token: str) -> object:
    """The ``iss`` the token claims, unverified: only to choose how to verify it."""
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError:
        return None


def _has_claim(claims: dict[str, Any], name: str, wanted: str) -> bool:
    value = claims.get(name)
    if isinstance(value, list):
        return wanted in value
    # Space-delimited strings, such as OAuth's "scope", hold several values.
    return isinstance(value, str) and wanted in value.split(" ")


async def verify_oidc_token(settings: Settings, token: str) -> dict[str, Any]:
    """The claims of a token from the configured issuer; 401 if it does not verify for us."""
    assert settings.codec_oidc_issuer is not None
    try:
        # An unknown key id (forged, or another issuer's) is refused here too.
        key = await issuer_keys(settings.codec_oidc_issuer).signing_key(token)
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=settings.codec_oidc_algorithms,
            audience=settings.codec_oidc_audience,
            issuer=settings.codec_oidc_issuer,
            leeway=settings.codec_oidc_leeway_seconds,
            options={"require": ["exp", "iss", "aud"]},
        )
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"The identity provider's token is refused: {exc}.") from None
    missing = [
        name
        for name, wanted in settings.codec_oidc_required_claims.items()
        if not _has_claim(claims, name, wanted)
    ]
    if missing:
        raise Forbidden(f"The token lacks the claims operators need: {', '.join(missing)}.")
    return claims


async def _operator(
    settings: SettingsDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    if settings.codec_server_open:
        return
    if (
        credentials is not None
        and settings.codec_oidc_issuer is not None
        and _claimed_issuer(credentials.credentials) == settings.codec_oidc_issuer
    ):
        await verify_oidc_token(settings, credentials.credentials)
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
    """Decrypt payloads for display; payloads stored in clear (search attributes, the SDK's
    patch markers) come back as they are; an encrypted one that does not decrypt (unknown key
    id, altered) fails the request with 422."""
    codec = client.data_converter.payload_codec
    assert codec is not None
    try:
        decoded = await decode_for_display(codec, (await _payloads(request)).payloads)
    except CodecError as exc:
        raise UndecodablePayload(str(exc)) from None
    return _json(list(decoded))


@router.post("/encode", dependencies=[Depends(_operator)])
async def encode(request: Request, client: TemporalDep) -> Response:
    """Encrypt payloads the UI sends (signals and queries started from the UI)."""
    codec = client.data_converter.payload_codec
    assert codec is not None
    return _json(list(await codec.encode((await _payloads(request)).payloads)))
