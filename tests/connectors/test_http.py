"""The connector HTTP client over real HTTP: the SSRF guard's connection path and bounded reads."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from connectors.http import (
    ResponseTooLarge,
    UnsafeURL,
    VendorUnavailable,
    connector_client,
    send,
)
from tests.peers.asgi import serve


def _app() -> Starlette:
    async def hello(request: Request) -> Response:
        return JSONResponse({"client": request.client.host if request.client else None})

    async def endless(request: Request) -> Response:
        # No Content-Length: the size shows only while reading.
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(1000):
                yield b"x" * 65_536

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    async def slow(request: Request) -> Response:
        await anyio.sleep(1)
        return JSONResponse({})

    return Starlette(
        routes=[Route("/hello", hello), Route("/endless", endless), Route("/slow", slow)]
    )


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve(_app()) as url:
        yield url


def _loopback_only(address: str) -> str | None:
    return None if address in ("127.0.0.1", "::1") else "not loopback"


async def test_guarded_client_resolves_checks_and_connects_to_the_checked_address(
    server: str,
) -> None:
    port = server.rsplit(":", 1)[1]
    # "localhost" may resolve to ::1 first while the server listens on 127.0.0.1 only: the
    # guard tries each checked address in turn.
    async with connector_client(allow_private=False, address_policy=_loopback_only) as http:
        response = await http.get(f"http://localhost:{port}/hello")
    assert response.status_code == 200
    assert response.json() == {"client": "127.0.0.1"}


async def test_guarded_client_refuses_before_connecting(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    async with connector_client(allow_private=False) as http:
        for url in (f"http://localhost:{port}/hello", f"http://127.0.0.1:{port}/hello"):
            with pytest.raises(UnsafeURL, match="loopback"):
                await http.get(url)


async def test_unbounded_body_is_cut_off_at_the_limit(server: str) -> None:
    async with connector_client(allow_private=True) as http:
        request = http.build_request("GET", f"{server}/endless")
        with pytest.raises(ResponseTooLarge) as caught:
            await send(http, request, vendor="Peer", max_bytes=1_000_000)
    assert caught.value.limit == 1_000_000


async def test_connection_refused_is_retryable_unavailability() -> None:
    from tests.conftest import free_port

    async with connector_client(allow_private=True) as http:
        request = http.build_request("GET", f"http://127.0.0.1:{free_port()}/")
        with pytest.raises(VendorUnavailable) as caught:
            await send(http, request, vendor="Peer")
    assert caught.value.retryable


async def test_read_timeout_is_retryable_unavailability(server: str) -> None:
    async with connector_client(
        allow_private=True, timeout=httpx.Timeout(0.2, connect=5.0)
    ) as http:
        request = http.build_request("GET", f"{server}/slow")
        with pytest.raises(VendorUnavailable, match="did not answer in time"):
            await send(http, request, vendor="Peer")


# --- TLS through the guard ------------------------------------------------------------------


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate for the name ``localhost`` only (no IP address)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    from tests.conftest import free_port

    ca, cert, key = _certificates(tmp_path_factory.mktemp("tls"))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            _app(),
            host="127.0.0.1",
            port=port,
            http="h11",
            ws="none",
            lifespan="off",
            log_level="warning",
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive()
        time.sleep(0.01)
    yield port, ca
    server.should_exit = True
    thread.join(10)


async def test_tls_is_verified_for_the_host_name_while_connecting_to_the_checked_address(
    tls_server: tuple[int, Path],
) -> None:
    port, ca = tls_server
    trust = ssl.create_default_context(cafile=str(ca))
    async with connector_client(
        allow_private=False, address_policy=_loopback_only, ssl_context=trust
    ) as http:
        # The certificate names localhost only: had the guard's address replaced the name in
        # the TLS handshake, verification would fail.
        response = await http.get(f"https://localhost:{port}/hello")
        assert response.status_code == 200
        with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
            await http.get(f"https://127.0.0.1:{port}/hello")
    async with connector_client(allow_private=False, address_policy=_loopback_only) as http:
        # The default trust store does not know the private CA.
        with pytest.raises(httpx.ConnectError):
            await http.get(f"https://localhost:{port}/hello")
