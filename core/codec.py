"""Payload encryption: every payload Temporal stores is AES-GCM ciphertext.

The key id travels in the payload metadata, so keys rotate by putting a new key first in
``BIZ_CODEC_KEYS``; older payloads still decrypt while their key is listed.

Format ``binary/encrypted;v2`` (written since the key id became associated data): the key id is
authenticated with the ciphertext, so a payload relabelled with another key id fails to decrypt
instead of being read under a key it was not sealed with. The first format,
``binary/encrypted`` without associated data, is still decrypted: running workflows' histories
hold it.

Decoding refuses a payload that is not encrypted: history written by a client without this
codec (or altered) is not trusted as workflow input. Clusters whose histories still hold
plaintext from before encryption turn on ``BIZ_CODEC_ACCEPT_PLAINTEXT`` until those
workflows have ended. Showing history to operators is another matter: see
:func:`decode_for_display`.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted;v2"
# Written before the key id was bound as associated data; decrypted, never written.
LEGACY_ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
_NONCE_BYTES = 12
_TAG_BYTES = 16


class CodecError(ValueError):
    """A payload cannot be decoded: the caller gets why, never the plaintext."""


class CodecKeyError(CodecError):
    """The configured keys are malformed, or a payload names a key we do not have."""


class TamperedPayload(CodecError):
    """The ciphertext, its nonce or its key id was altered, or sealed with another key."""


class PlaintextRefused(CodecError):
    """An unencrypted payload where only ciphertext is accepted."""


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


def associated_data(kid: str) -> bytes:
    """What a v2 ciphertext authenticates besides itself: the format and the key id."""
    return ENCODING + b"\0" + kid.encode()


class EncryptionCodec(PayloadCodec):
    """AES-GCM payload codec with key ids for rotation.

    ``accept_plaintext`` lets unencrypted payloads through on decode: a migration switch for
    histories written before encryption, off by default.
    """

    def __init__(self, keys: Mapping[str, bytes], *, accept_plaintext: bool = False) -> None:
        if not keys:
            raise CodecKeyError("at least one encryption key is required")
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.items()}
        self._active = next(iter(keys))
        self._accept_plaintext = accept_plaintext

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Encrypt each payload whole (metadata included) with the active key."""
        cipher = self._ciphers[self._active]
        aad = associated_data(self._active)
        encoded = []
        for payload in payloads:
            nonce = os.urandom(_NONCE_BYTES)
            data = nonce + cipher.encrypt(nonce, payload.SerializeToString(), aad)
            encoded.append(
                Payload(
                    metadata={"encoding": ENCODING, KEY_ID_METADATA: self._active.encode()},
                    data=data,
                )
            )
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypt each payload; raise :class:`CodecError` for one that cannot be trusted."""
        return [self._decode_one(payload) for payload in payloads]

    def _decode_one(self, payload: Payload) -> Payload:
        encoding = payload.metadata.get("encoding")
        if encoding not in (ENCODING, LEGACY_ENCODING):
            if self._accept_plaintext:
                return payload
            raise PlaintextRefused(
                f"refusing an unencrypted payload (encoding {encoding!r}); a cluster whose "
                "history still holds plaintext sets BIZ_CODEC_ACCEPT_PLAINTEXT=true"
            )
        kid = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise CodecKeyError(f"payload was encrypted with unknown key id {kid!r}")
        aad = associated_data(kid) if encoding == ENCODING else None
        nonce, ciphertext = payload.data[:_NONCE_BYTES], payload.data[_NONCE_BYTES:]
        try:
            if len(ciphertext) < _TAG_BYTES:
                raise InvalidTag
            return Payload.FromString(cipher.decrypt(nonce, ciphertext, aad))
        except InvalidTag:
            raise TamperedPayload(
                f"payload under key id {kid!r} fails authentication: altered, or not sealed "
                "with this key"
            ) from None


def is_encrypted(payload: Payload) -> bool:
    """Whether ``payload`` was sealed by this codec (either format)."""
    return payload.metadata.get("encoding") in (ENCODING, LEGACY_ENCODING)


async def decode_for_display(codec: PayloadCodec, payloads: Sequence[Payload]) -> list[Payload]:
    """Decrypt the encrypted payloads and keep the others as they are, in order.

    For showing history to operators, never for feeding workflows: history also holds payloads
    written in clear by design (search attributes, headers, the SDK's patch markers), which
    reveal nothing by being shown. Encrypted ones that do not decrypt still raise.
    """
    opened = iter(await codec.decode([p for p in payloads if is_encrypted(p)]))
    return [next(opened) if is_encrypted(p) else p for p in payloads]


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
