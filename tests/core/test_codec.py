"""The payload codec: round trip, rotation, and ciphertext in real workflow history."""

from __future__ import annotations

import uuid

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from core.codec import ENCODING, CodecKeyError, EncryptionCodec, generate_key_spec, parse_keys


def _payload(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text.encode())


async def test_round_trip_hides_the_plaintext() -> None:
    codec = EncryptionCodec(parse_keys(generate_key_spec()))
    [encoded] = await codec.encode([_payload('"jane@example.com"')])
    assert encoded.metadata["encoding"] == ENCODING
    assert b"jane@example.com" not in encoded.data
    assert await codec.decode([encoded]) == [_payload('"jane@example.com"')]


async def test_rotated_key_still_decrypts_old_payloads() -> None:
    old_spec, new_spec = generate_key_spec(), generate_key_spec()
    [old_payload] = await EncryptionCodec(parse_keys(old_spec)).encode([_payload("1")])
    rotated = EncryptionCodec(parse_keys(f"{new_spec},{old_spec}"))
    assert await rotated.decode([old_payload]) == [_payload("1")]
    [new_payload] = await rotated.encode([_payload("2")])
    assert new_payload.metadata["encryption-key-id"] == new_spec.split(":")[0].encode()


async def test_unknown_key_id_is_an_error() -> None:
    [payload] = await EncryptionCodec(parse_keys(generate_key_spec())).encode([_payload("1")])
    with pytest.raises(CodecKeyError, match="unknown key id"):
        await EncryptionCodec(parse_keys(generate_key_spec())).decode([payload])


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
