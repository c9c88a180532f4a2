"""The payload codec: round trip, rotation, the key id as associated data, the first format
still read, plaintext refused, and ciphertext in real workflow history."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from core.codec import (
    ENCODING,
    KEY_ID_METADATA,
    LEGACY_ENCODING,
    CodecKeyError,
    EncryptionCodec,
    PlaintextRefused,
    TamperedPayload,
    decode_for_display,
    generate_key_spec,
    is_encrypted,
    parse_keys,
)
from core.settings import Settings
from core.temporal import data_converter
from tests.histories import TEST_CODEC_KEYS, history_files

# A payload sealed by the codec's first format (no associated data), as running workflows'
# histories hold it; made with this published test key, which protects nothing.
LEGACY_KEYS = "legacy-test:" + base64.b64encode(b"bizosaas-legacy-TEST-KEY-no-use!").decode()
LEGACY_PAYLOAD = (
    '{"metadata": {"encoding": "YmluYXJ5L2VuY3J5cHRlZA==", '
    '"encryption-key-id": "bGVnYWN5LXRlc3Q="}, '
    '"data": "ZjuK1MjqDJIHUiIrWyD3J4Hf0iRMvuLMsl5/zK4t3FPcisQTsp4uWa3gBrIZDmRpbNiNfVe5IS2eesTPW1Jp'
    'wqWSHQvzvAhs"}'
)


def _payload(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text.encode())


def _codec(spec: str | None = None, *, accept_plaintext: bool = False) -> EncryptionCodec:
    return EncryptionCodec(
        parse_keys(spec or generate_key_spec()), accept_plaintext=accept_plaintext
    )


async def test_round_trip_hides_the_plaintext() -> None:
    codec = _codec()
    [encoded] = await codec.encode([_payload('"jane@example.com"')])
    assert encoded.metadata["encoding"] == ENCODING == b"binary/encrypted;v2"
    assert b"jane@example.com" not in encoded.SerializeToString()
    assert await codec.decode([encoded]) == [_payload('"jane@example.com"')]


async def test_rotated_key_still_decrypts_old_payloads() -> None:
    old_spec, new_spec = generate_key_spec(), generate_key_spec()
    [old_payload] = await _codec(old_spec).encode([_payload("1")])
    rotated = _codec(f"{new_spec},{old_spec}")
    assert await rotated.decode([old_payload]) == [_payload("1")]
    [new_payload] = await rotated.encode([_payload("2")])
    assert new_payload.metadata[KEY_ID_METADATA] == new_spec.split(":")[0].encode()


async def test_unknown_key_id_is_an_error() -> None:
    [payload] = await _codec().encode([_payload("1")])
    with pytest.raises(CodecKeyError, match="unknown key id"):
        await _codec().decode([payload])


async def test_the_key_id_is_bound_to_the_ciphertext() -> None:
    """The same key listed under two ids: a payload relabelled with the other id is refused."""
    key = generate_key_spec().split(":")[1]
    codec = _codec(f"a:{key},b:{key}")
    [payload] = await codec.encode([_payload('"jane@example.com"')])
    assert payload.metadata[KEY_ID_METADATA] == b"a"
    payload.metadata[KEY_ID_METADATA] = b"b"
    with pytest.raises(TamperedPayload, match="'b'"):
        await codec.decode([payload])


async def test_altered_or_truncated_ciphertext_is_refused() -> None:
    codec = _codec()
    [payload] = await codec.encode([_payload('"jane@example.com"')])
    flipped = Payload()
    flipped.CopyFrom(payload)
    flipped.data = payload.data[:-1] + bytes([payload.data[-1] ^ 1])
    truncated = Payload()
    truncated.CopyFrom(payload)
    truncated.data = payload.data[:5]
    for bad in (flipped, truncated):
        with pytest.raises(TamperedPayload, match="fails authentication"):
            await codec.decode([bad])


async def test_a_v2_payload_relabelled_as_the_first_format_is_refused() -> None:
    """A downgrade to the format without associated data does not skip the check."""
    codec = _codec()
    [payload] = await codec.encode([_payload("1")])
    payload.metadata["encoding"] = LEGACY_ENCODING
    with pytest.raises(TamperedPayload):
        await codec.decode([payload])


async def test_payloads_of_the_first_format_still_decrypt() -> None:
    """Histories of running workflows hold payloads sealed before the key id was bound."""
    legacy = json_format.Parse(LEGACY_PAYLOAD, Payload())
    assert legacy.metadata["encoding"] == LEGACY_ENCODING
    decoded = await _codec(LEGACY_KEYS).decode([legacy])
    assert decoded == [_payload('"jane@example.com"')]
    # Through the project's whole converter too: the value comes back as the workflow sees it.
    converter = data_converter(parse_keys(LEGACY_KEYS))
    assert await converter.decode([legacy], [str]) == ["jane@example.com"]


def _sealed_payloads(node: Any) -> Iterator[Payload]:
    """Every encrypted payload in a history's JSON."""
    if isinstance(node, dict):
        if isinstance(node.get("metadata"), dict) and "encoding" in node["metadata"]:
            payload = json_format.ParseDict(node, Payload())
            if is_encrypted(payload):
                yield payload
            return
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            yield from _sealed_payloads(item)


async def test_every_payload_of_the_committed_histories_decrypts() -> None:
    """The replay histories were recorded by the codec of their day, with the published test
    key: each of their encrypted payloads still opens (the replay test needs every one)."""
    codec = _codec(TEST_CODEC_KEYS)
    sealed = [
        payload
        for path in history_files()
        for payload in _sealed_payloads(json.loads(path.read_text()))
    ]
    assert sealed, "no committed histories"
    decoded = await codec.decode(sealed)
    assert all(not is_encrypted(payload) for payload in decoded)


async def test_plaintext_is_refused_unless_the_migration_switch_is_on() -> None:
    plain = _payload('"jane@example.com"')
    with pytest.raises(PlaintextRefused, match="BIZ_CODEC_ACCEPT_PLAINTEXT"):
        await _codec().decode([plain])
    with pytest.raises(PlaintextRefused):
        await _codec().decode([Payload()])  # no encoding at all
    assert await _codec(accept_plaintext=True).decode([plain]) == [plain]


async def test_the_switch_is_a_setting_and_defaults_to_refusing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = parse_keys(generate_key_spec())
    plain = _payload('"jane@example.com"')
    assert Settings(_env_file=None).codec_accept_plaintext is False
    refusing = data_converter(keys)
    with pytest.raises(PlaintextRefused):
        await refusing.decode([plain], [str])

    monkeypatch.setenv("BIZ_CODEC_ACCEPT_PLAINTEXT", "true")
    settings = Settings(_env_file=None)
    assert settings.codec_accept_plaintext is True
    migrating = data_converter(keys, accept_plaintext=settings.codec_accept_plaintext)
    assert await migrating.decode([plain], [str]) == ["jane@example.com"]
    # Still encrypts: the switch only lets old plaintext be read.
    [sealed] = await migrating.encode(["jane@example.com"])
    assert sealed.metadata["encoding"] == ENCODING


async def test_display_shows_clear_payloads_and_still_refuses_tampered_ones() -> None:
    codec = _codec()
    [a, b] = await codec.encode([_payload('"a"'), _payload('"b"')])
    marker = _payload('{"id":"billing-lifeline","deprecated":false}')
    shown = await decode_for_display(codec, [a, marker, b])
    assert shown == [_payload('"a"'), marker, _payload('"b"')]
    a.data = a.data[:-1] + bytes([a.data[-1] ^ 1])
    with pytest.raises(TamperedPayload):
        await decode_for_display(codec, [marker, a])


@pytest.mark.parametrize(
    ("spec", "message"),
    [("", "empty"), ("nokey", "must look like"), ("k:!!!", "not base64"), ("k:AAAA", "bytes")],
)
def test_malformed_key_specs_are_refused(spec: str, message: str) -> None:
    with pytest.raises(CodecKeyError, match=message):
        parse_keys(spec)


async def test_history_holds_only_ciphertext(temporal_client: Client) -> None:
    """A workflow input sent through the project's client is encrypted in stored history."""
    secret = f"secret-{uuid.uuid4()}@example.com"
    handle = await temporal_client.start_workflow(
        "NoSuchWorkflowType", secret, id=f"codec-{uuid.uuid4()}", task_queue="codec-check"
    )
    try:
        history = await handle.fetch_history()
        started = history.events[0].workflow_execution_started_event_attributes
        [stored] = started.input.payloads
        assert stored.metadata["encoding"] == ENCODING
        assert secret.encode() not in stored.SerializeToString()
    finally:
        await handle.terminate()
