"""The OpenID provider peer: oidc-provider-mock, run as a process on loopback.

A process of its own, not a thread: its libraries warn, and this suite turns warnings into
errors (an authlib DeprecationWarning would become a 500 at its token endpoint).

It serves discovery, authorize (an HTML form: POST ``sub=...``), token (RS256 ID tokens whose
audience is the client id), userinfo and JWKS; any client id is accepted without registration.
Users are created with ``PUT /users/{sub}`` and their claims.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import free_port, sibling_binary

REDIRECT_URI = "http://127.0.0.1:9/callback"  # never called: the code is read from the redirect


@contextmanager
def oidc_provider(log_dir: Path, *, token_max_age: int | None = None) -> Iterator[str]:
    """Run the provider until the block ends; yields its issuer URL.

    ``token_max_age`` (seconds) shortens the life of the ID and access tokens it issues.
    """
    port = free_port()
    log = log_dir / f"oidc-provider-{port}.log"
    command = [sibling_binary("oidc-provider-mock"), "--host", "127.0.0.1", "--port", str(port)]
    if token_max_age is not None:
        command += ["--token-max-age", str(token_max_age)]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(f"{url}/.well-known/openid-configuration", process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"oidc-provider-mock exited: {log.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"oidc-provider-mock did not answer at {url}: {log.read_text()}")


async def id_token(
    http: httpx.AsyncClient, issuer: str, client_id: str, claims: dict[str, Any] | None = None
) -> str:
    """Sign a new user in at the provider for ``client_id`` (authorization code flow) and
    return the ID token it issues: a JWT whose audience is ``client_id``."""
    sub = f"operator-{uuid.uuid4().hex[:12]}"
    created = await http.put(f"{issuer}/users/{sub}", json=claims or {})
    assert created.status_code == 204, created.text
    authorize = await http.post(
        f"{issuer}/oauth2/authorize",
        params={
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "response_type": "code",
            "scope": "openid",
            "state": uuid.uuid4().hex,
        },
        data={"sub": sub},
    )
    assert authorize.status_code == 302, authorize.text
    [code] = parse_qs(urlsplit(authorize.headers["location"]).query)["code"]
    token = await http.post(
        f"{issuer}/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "client_id": client_id,
            "client_secret": "any",
        },
    )
    assert token.status_code == 200, token.text
    value = token.json()["id_token"]
    assert isinstance(value, str)
    return value
