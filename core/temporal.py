"""The Temporal client factory: one data converter, encrypted payloads, any cluster by settings."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import NoReturn

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.service import TLSConfig

from core import telemetry
from core.codec import EncryptionCodec, generate_key_spec, parse_keys
from core.settings import Settings


class TemporalUnavailable(RuntimeError):
    """The Temporal frontend could not be reached."""


def load_codec_keys(settings: Settings) -> dict[str, bytes]:
    """Keys from ``BIZ_CODEC_KEYS``, else from the local secret store."""
    if settings.codec_keys is not None:
        return parse_keys(settings.codec_keys.get_secret_value())
    return parse_keys(settings.secret_store.get_or_create("codec-keys", generate_key_spec))


def data_converter(keys: dict[str, bytes], *, accept_plaintext: bool = False) -> DataConverter:
    """Pydantic-aware converter whose payloads are encrypted by :class:`EncryptionCodec`.

    Failures keep their message and stack trace in encoded attributes, so the codec encrypts
    them too: error text (a database error quoting a row, say) never reaches history in clear.
    ``accept_plaintext`` is the migration switch ``BIZ_CODEC_ACCEPT_PLAINTEXT``.
    """
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keys, accept_plaintext=accept_plaintext),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def tls_config(settings: Settings) -> TLSConfig | bool:
    """mTLS from the certificate files, or TLS with system roots for an API key; else plain."""
    if settings.temporal_tls_cert is None and settings.temporal_api_key is None:
        return False
    return TLSConfig(
        server_root_ca_cert=settings.temporal_tls_ca.read_bytes()
        if settings.temporal_tls_ca
        else None,
        client_cert=settings.temporal_tls_cert.read_bytes() if settings.temporal_tls_cert else None,
        client_private_key=settings.temporal_tls_key.read_bytes()
        if settings.temporal_tls_key
        else None,
    )


async def connect(settings: Settings) -> Client:
    """Connect to the configured cluster (dev server, self-hosted with mTLS, or Temporal Cloud)."""
    converter = data_converter(
        load_codec_keys(settings), accept_plaintext=settings.codec_accept_plaintext
    )
    api_key = settings.temporal_api_key.get_secret_value() if settings.temporal_api_key else None
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=converter,
            tls=tls_config(settings),
            api_key=api_key,
            runtime=telemetry.runtime(),
            interceptors=telemetry.client_interceptors(),
        )
    except RuntimeError as exc:
        raise TemporalUnavailable(
            f"cannot reach Temporal at {settings.temporal_address} "
            f"(namespace {settings.temporal_namespace!r}; set BIZ_TEMPORAL_ADDRESS): {exc}"
        ) from exc


def exit_without_teardown(code: int) -> NoReturn:
    """End a process that holds the Temporal SDK's runtime (a client, a worker or a replayer),
    after its clean shutdown.

    The SDK's Rust threads can outlive the event loop and abort a finalizing interpreter
    ("PyGILState_Release ... finalizing", temporalio/sdk-python#300); everything of ours is
    closed by now, so the interpreter's own teardown is skipped.
    """
    telemetry.shutdown_tracing()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
