"""Cluster connection settings: mTLS files or a Temporal Cloud API key, by settings alone."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from temporalio.service import TLSConfig

from core.settings import Settings
from core.temporal import tls_config


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_plain_connection_by_default() -> None:
    assert tls_config(_settings()) is False


def test_mutual_tls_reads_the_certificate_files(tmp_path: Path) -> None:
    files = {name: tmp_path / name for name in ("client.pem", "client.key", "ca.pem")}
    for name, path in files.items():
        path.write_bytes(f"-----{name}-----".encode())
    tls = tls_config(
        _settings(
            temporal_tls_cert=files["client.pem"],
            temporal_tls_key=files["client.key"],
            temporal_tls_ca=files["ca.pem"],
        )
    )
    assert isinstance(tls, TLSConfig)
    assert tls.client_cert == b"-----client.pem-----"
    assert tls.client_private_key == b"-----client.key-----"
    assert tls.server_root_ca_cert == b"-----ca.pem-----"


def test_an_api_key_implies_tls_with_system_roots() -> None:
    tls = tls_config(_settings(temporal_api_key=SecretStr("key")))
    assert isinstance(tls, TLSConfig)
    assert tls.client_cert is None
    assert tls.server_root_ca_cert is None
