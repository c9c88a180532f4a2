"""The secret store on a real OpenBao server and on the local disk: one contract, two stores."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from connectors.secrets import (
    SecretStore,
    SecretStoreError,
    connection_path,
    secret_store_from_settings,
    tenant_key,
)
from connectors.secrets.local import LocalSecretVault
from connectors.secrets.vault import VaultSecretStore
from core.settings import Settings
from tests.peers.openbao import OpenBao, running_openbao


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    with running_openbao() as server:
        yield server


@pytest.fixture(params=["openbao", "local"])
def store(request: pytest.FixtureRequest, settings: Settings) -> SecretStore:
    if request.param == "local":
        return secret_store_from_settings(settings)
    bao: OpenBao = request.getfixturevalue("openbao")
    vault = settings.model_copy(
        update={
            "vault_addr": bao.address,
            "vault_role_id": bao.role_id,
            "vault_secret_id": SecretStr(bao.secret_id),
        }
    )
    return secret_store_from_settings(vault)


def _path() -> str:
    return connection_path(uuid.uuid4(), uuid.uuid4())


async def test_write_read_rotate_delete(store: SecretStore) -> None:
    path = _path()
    assert await store.get(path) is None
    assert await store.put(path, {"api_key": "first-key", "user": "shop"}) == 1
    assert await store.get(path) == {"api_key": "first-key", "user": "shop"}
    assert await store.put(path, {"api_key": "rotated-key", "user": "shop"}) == 2
    assert await store.get(path) == {"api_key": "rotated-key", "user": "shop"}
    await store.delete(path)
    assert await store.get(path) is None
    await store.delete(path)  # deleting nothing is fine


async def test_tenant_keys_encrypt_rotate_and_still_decrypt(store: SecretStore) -> None:
    key = tenant_key(uuid.uuid4())
    old = await store.encrypt(key, b"sk-tenant-byok-1")
    assert b"sk-tenant-byok-1" not in old.encode()
    await store.rotate_key(key)
    new = await store.encrypt(key, b"sk-tenant-byok-2")
    assert old.split(":")[1] != new.split(":")[1]  # the ciphertext names its key version
    assert await store.decrypt(key, old) == b"sk-tenant-byok-1"
    assert await store.decrypt(key, new) == b"sk-tenant-byok-2"
    with pytest.raises(SecretStoreError):
        await store.decrypt(tenant_key(uuid.uuid4()), new)


async def test_the_application_role_reaches_only_tenant_paths(
    openbao: OpenBao, settings: Settings
) -> None:
    vault = VaultSecretStore(
        settings.model_copy(
            update={
                "vault_addr": openbao.address,
                "vault_role_id": openbao.role_id,
                "vault_secret_id": SecretStr(openbao.secret_id),
            }
        )
    )
    with pytest.raises(SecretStoreError):
        await vault.put("platform/root-credentials", {"x": "y"})
    secret = openbao.root().secrets.kv.v2.read_secret_version  # what an operator would see
    path = _path()
    await vault.put(path, {"token": "t"})
    assert secret(path=path, raise_on_deleted_version=True)["data"]["data"] == {"token": "t"}


async def test_local_files_hold_no_plaintext_and_refuse_odd_paths(settings: Settings) -> None:
    local = LocalSecretVault(settings)
    path = _path()
    await local.put(path, {"password": "app-password-xyz"})
    folder = Path(settings.data_dir, "secrets", "vault")
    contents = await asyncio.to_thread(lambda: [f.read_bytes() for f in folder.rglob("*.json")])
    assert contents
    assert all(b"app-password-xyz" not in content for content in contents)
    for bad in ("../escape", "/absolute", "a//b", ""):
        with pytest.raises(SecretStoreError):
            await local.put(bad, {"k": "v"})
