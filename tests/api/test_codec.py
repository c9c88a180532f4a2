"""The remote codec endpoint the Temporal UI uses to show decrypted payloads: who may call it
(this API's super_admin tokens, the UI's own OIDC tokens), and 4xx problems for payloads it
cannot decode."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from google.protobuf import json_format
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.common.v1 import Payload
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from core.codec import EncryptionCodec, generate_key_spec, parse_keys
from core.db import SessionFactory
from core.settings import Settings
from models.user import Role
from tests.conftest import free_port
from tests.factories import member
from tests.peers.oidc import id_token, oidc_provider

PROBLEM = "application/problem+json"

PLAIN = {"metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
         "data": base64.b64encode(b'"jane@example.com"').decode()}  # fmt: skip


async def _round_trip(api: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    encoded = await api.post("/codec/encode", json={"payloads": [PLAIN]}, headers=headers)
    assert encoded.status_code == 200, encoded.text
    [sealed] = encoded.json()["payloads"]
    assert base64.b64decode(sealed["metadata"]["encoding"]) == b"binary/encrypted;v2"
    return await api.post("/codec/decode", json={"payloads": [sealed]}, headers=headers)


async def test_super_admin_decodes(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    staff = await member(sessions, settings, Role.SUPER_ADMIN)
    decoded = await _round_trip(api, staff.headers)
    assert decoded.json() == {"payloads": [PLAIN]}


async def test_other_callers_are_refused(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings, Role.TENANT_ADMIN)
    body = {"payloads": [PLAIN]}
    assert (await api.post("/codec/decode", json=body, headers=admin.headers)).status_code == 403
    assert (await api.post("/codec/decode", json=body)).status_code == 401


@pytest.fixture
async def open_codec_api(
    settings: Settings, temporal_env: WorkflowEnvironment, engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    local = settings.model_copy(
        update={"codec_server_open": True, "codec_server_origins": ["http://127.0.0.1:8233"]}
    )
    app = create_app(local, temporal_env.client, engine)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        yield client


async def test_dev_mode_is_open_to_the_local_ui(open_codec_api: httpx.AsyncClient) -> None:
    decoded = await _round_trip(open_codec_api, {"Origin": "http://127.0.0.1:8233"})
    assert decoded.json() == {"payloads": [PLAIN]}
    assert decoded.headers["access-control-allow-origin"] == "http://127.0.0.1:8233"
    bad = await open_codec_api.post("/codec/decode", content=b"{not json")
    assert bad.status_code == 422


# --- Payloads that cannot be decoded are 4xx problems, never 500 -------------------------------


def _sealed_elsewhere(codec_payload: dict[str, Any], **metadata: bytes) -> dict[str, Any]:
    sealed = dict(codec_payload, metadata=dict(codec_payload["metadata"]))
    for name, value in metadata.items():
        sealed["metadata"][name] = base64.b64encode(value).decode()
    return sealed


async def test_undecodable_payloads_are_problems(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    staff = await member(sessions, settings, Role.SUPER_ADMIN)
    encoded = await api.post("/codec/encode", json={"payloads": [PLAIN]}, headers=staff.headers)
    [sealed] = encoded.json()["payloads"]
    data = base64.b64decode(sealed["data"])
    [foreign] = await EncryptionCodec(parse_keys(generate_key_spec())).encode(
        [json_format.ParseDict(PLAIN, Payload())]
    )
    cases = [
        ("unknown key id", json_format.MessageToDict(foreign)),
        ("unknown key id", _sealed_elsewhere(sealed, **{"encryption-key-id": b"retired"})),
        (
            "fails authentication",
            dict(sealed, data=base64.b64encode(data[:-1] + bytes([data[-1] ^ 1])).decode()),
        ),
        ("fails authentication", dict(sealed, data=base64.b64encode(data[:4]).decode())),
    ]
    for expected, payload in cases:
        response = await api.post(
            "/codec/decode", json={"payloads": [payload]}, headers=staff.headers
        )
        assert response.status_code == 422, (expected, response.text)
        assert response.headers["content-type"] == PROBLEM
        problem = response.json()
        assert problem["type"].endswith("undecodable-payload")
        assert expected in problem["detail"]
        assert "jane@example.com" not in response.text


async def test_payloads_stored_in_clear_are_shown_as_they_are(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    """The UI sends every payload of an event, including those history holds in clear by
    design (the SDK's patch markers, search attributes): shown unchanged, in order."""
    staff = await member(sessions, settings, Role.SUPER_ADMIN)
    encoded = await api.post("/codec/encode", json={"payloads": [PLAIN]}, headers=staff.headers)
    [sealed] = encoded.json()["payloads"]
    marker = {
        "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
        "data": base64.b64encode(b'{"id":"billing-lifeline","deprecated":false}').decode(),
    }

    decoded = await api.post(
        "/codec/decode", json={"payloads": [marker, sealed, marker]}, headers=staff.headers
    )

    assert decoded.status_code == 200, decoded.text
    assert decoded.json() == {"payloads": [marker, PLAIN, marker]}


# --- The Temporal UI's own sign-in (OIDC) -------------------------------------------------------

AUDIENCE = "temporal-ui"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The UI's identity provider (oidc-provider-mock), a process on loopback."""
    with oidc_provider(tmp_path_factory.mktemp("oidc")) as url:
        yield url


@pytest.fixture
async def provider() -> AsyncIterator[httpx.AsyncClient]:
    """What the UI's sign-in does at the provider."""
    async with httpx.AsyncClient() as http:
        yield http


@asynccontextmanager
async def _codec_api(
    settings: Settings, temporal_env: WorkflowEnvironment, engine: AsyncEngine, **update: Any
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update=update), temporal_env.client, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


@pytest.fixture
async def oidc_api(
    settings: Settings, temporal_env: WorkflowEnvironment, engine: AsyncEngine, issuer: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The API with the codec endpoint open to the provider's tokens for the UI's audience."""
    async with _codec_api(
        settings, temporal_env, engine, codec_oidc_issuer=issuer, codec_oidc_audience=AUDIENCE
    ) as client:
        yield client


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assert_refused(response: httpx.Response, status: int, detail: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert detail in response.json()["detail"], response.text


async def test_a_token_from_the_uis_provider_decodes(
    oidc_api: httpx.AsyncClient, provider: httpx.AsyncClient, issuer: str
) -> None:
    token = await id_token(provider, issuer, AUDIENCE)

    decoded = await _round_trip(oidc_api, _bearer(token))

    assert decoded.status_code == 200, decoded.text
    assert decoded.json() == {"payloads": [PLAIN]}


async def test_tokens_that_do_not_verify_are_401(
    oidc_api: httpx.AsyncClient, provider: httpx.AsyncClient, issuer: str
) -> None:
    body = {"payloads": [PLAIN]}
    genuine = await id_token(provider, issuer, AUDIENCE)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    jwks = (await provider.get(f"{issuer}/jwks")).json()
    [kid] = [key["kid"] for key in jwks["keys"]]
    impostor_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused = [
        ("Audience doesn't match", await id_token(provider, issuer, "another-app")),
        (
            "Signature verification failed",
            jwt.encode(claims, impostor_key, algorithm="RS256", headers={"kid": kid}),
        ),
        # Without a key id the issuer's only key is tried: the signature still fails.
        ("Signature verification failed", jwt.encode(claims, impostor_key, algorithm="RS256")),
        (
            "Unable to find a signing key",
            jwt.encode(claims, impostor_key, algorithm="RS256", headers={"kid": "impostor"}),
        ),
        # HMAC and unsigned tokens, as in algorithm-confusion attacks.
        ("alg value is not allowed", jwt.encode(claims, "x" * 32, algorithm="HS256")),
        ("alg value is not allowed", jwt.encode(claims, "", algorithm="none")),
    ]
    for reason, token in refused:
        response = await oidc_api.post("/codec/decode", json=body, headers=_bearer(token))
        _assert_refused(response, 401, reason)
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.fixture(scope="module")
def short_lived_issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second provider whose tokens expire one second after they are issued."""
    with oidc_provider(tmp_path_factory.mktemp("oidc-short"), token_max_age=1) as url:
        yield url


async def test_an_expired_token_is_401(
    settings: Settings,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    provider: httpx.AsyncClient,
    short_lived_issuer: str,
) -> None:
    token = await id_token(provider, short_lived_issuer, AUDIENCE)
    await asyncio.sleep(2.1)
    async with _codec_api(
        settings,
        temporal_env,
        engine,
        codec_oidc_issuer=short_lived_issuer,
        codec_oidc_audience=AUDIENCE,
        codec_oidc_leeway_seconds=0,
    ) as api:
        response = await api.post(
            "/codec/decode", json={"payloads": [PLAIN]}, headers=_bearer(token)
        )
    _assert_refused(response, 401, "Signature has expired")


async def test_required_claims_are_checked(
    settings: Settings,
    temporal_env: WorkflowEnvironment,
    engine: AsyncEngine,
    provider: httpx.AsyncClient,
    issuer: str,
) -> None:
    operator = await id_token(provider, issuer, AUDIENCE, {"groups": ["temporal-operators"]})
    colleague = await id_token(provider, issuer, AUDIENCE, {"groups": ["marketing"]})
    async with _codec_api(
        settings,
        temporal_env,
        engine,
        codec_oidc_issuer=issuer,
        codec_oidc_audience=AUDIENCE,
        codec_oidc_required_claims={"groups": "temporal-operators"},
    ) as api:
        assert (await _round_trip(api, _bearer(operator))).status_code == 200
        refused = await api.post(
            "/codec/decode", json={"payloads": [PLAIN]}, headers=_bearer(colleague)
        )
    _assert_refused(refused, 403, "groups")


async def test_this_apis_own_tokens_still_work(
    oidc_api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    staff = await member(sessions, settings, Role.SUPER_ADMIN)
    admin = await member(sessions, settings, Role.TENANT_ADMIN)
    body = {"payloads": [PLAIN]}

    assert (await _round_trip(oidc_api, staff.headers)).json() == body
    assert (
        await oidc_api.post("/codec/decode", json=body, headers=admin.headers)
    ).status_code == 403
    assert (await oidc_api.post("/codec/decode", json=body)).status_code == 401


async def test_an_unreachable_issuer_is_503(
    settings: Settings, temporal_env: WorkflowEnvironment, engine: AsyncEngine
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    token = jwt.encode(
        {"iss": nowhere, "aud": AUDIENCE, "exp": int(time.time()) + 60},
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        algorithm="RS256",
    )
    async with _codec_api(
        settings, temporal_env, engine, codec_oidc_issuer=nowhere, codec_oidc_audience=AUDIENCE
    ) as api:
        response = await api.post(
            "/codec/decode", json={"payloads": [PLAIN]}, headers=_bearer(token)
        )
    _assert_refused(response, 503, "discovery document")


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"codec_oidc_issuer": "https://id.example.com"}, "BIZ_CODEC_OIDC_AUDIENCE"),
        (
            {"codec_oidc_issuer": "http://id.example.com", "codec_oidc_audience": AUDIENCE},
            "https",
        ),
        (
            {
                "codec_oidc_issuer": "https://id.example.com",
                "codec_oidc_audience": AUDIENCE,
                "codec_oidc_algorithms": ["RS256", "HS256"],
            },
            "asymmetric",
        ),
    ],
)
def test_oidc_settings_are_checked(update: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, **update)
