"""Payload encryption: every payload Temporal stores is AES-GCM ciphertext.

The key id travels in the payload metadata, so keys rotate by putting a new key first in
``BIZ_CODEC_KEYS``; older payloads still decrypt while their key is listed.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
_NONCE_BYTES = 12


class CodecKeyError(ValueError):
    """The configured keys are malformed, or a payload names a key we do not have."""


def parse_keys(spec: str) -> dict[str, bytes]:
    """Parse ``kid:base64key,...`` into an ordered mapping; the first key is the active one."""
    keys: dict[str, bytes] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kid, sep, encoded = item.partition(":")
        if not sep or not kid:
            raise CodecKeyError("BIZ_CODEC_KEYS must look like 'kid:base64key[,kid:base64key]'")
        try:
            key = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise CodecKeyError(f"BIZ_CODEC_KEYS: key {kid!r} is not base64") from None
        if len(key) not in (16, 24, 32):
            raise CodecKeyError(f"BIZ_CODEC_KEYS: key {kid!r} must be 16, 24 or 32 bytes")
        keys[kid] = key
    if not keys:
        raise CodecKeyError("BIZ_CODEC_KEYS is empty")
    return keys


def generate_key_spec() -> str:
    """A fresh ``kid:base64key`` entry with a 256-bit key."""
    kid = f"k{secrets.token_hex(4)}"
    return f"{kid}:{base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()}"


class EncryptionCodec(PayloadCodec):
    """AES-GCM payload codec with key ids for rotation."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise CodecKeyError("at least one encryption key is required")
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self._active = next(iter(keys))

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Encrypt each payload whole (metadata included) with the active key."""
        cipher = self._ciphers[self._active]
        encoded = []
        for payload in payloads:
            nonce = os.urandom(_NONCE_BYTES)
            data = nonce + cipher.encrypt(nonce, payload.SerializeToString(), None)
            encoded.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID_METADATA: self._active.encode()},
                    data=data,
                )
            )
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypt encrypted payloads; pass others through unchanged."""
        return [self._decode_one(payload) for payload in payloads]

    def _decode_one(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        kid = payload.metadata.get(KEY_ID_METADATA, b"").decode()
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise CodecKeyError(f"payload was encrypted with unknown key id {kid!r}")
        nonce, ciphertext = payload.data[:_NONCE_BYTES], payload.data[_NONCE_BYTES:]
        return Payload.FromString(cipher.decrypt(nonce, ciphertext, None))


class FieldCipher:
    """AES-GCM for single database fields (the TOTP secret): ``kid:base64(nonce+ciphertext)``."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self._active = next(iter(keys))

    def encrypt(self, plaintext: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self._active].encrypt(nonce, plaintext.encode(), None)
        return f"{self._active}:{base64.b64encode(nonce + sealed).decode()}"

    def decrypt(self, stored: str) -> str:
        kid, _, encoded = stored.partition(":")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise CodecKeyError(f"field was encrypted with unknown key id {kid!r}")
        raw = base64.b64decode(encoded)
        return cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], None).decode()
