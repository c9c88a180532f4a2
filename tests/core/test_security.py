"""Access tokens: a token verified once is not verified again, but its expiry still holds."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from datetime import timedelta
from typing import Any

import jwt
import pytest

from core import security
from core.security import InvalidToken, Principal, issue_access_token, read_access_token
from models.user import Role

KEY = "k" * 32


def _principal() -> Principal:
    return Principal(uuid.uuid4(), uuid.uuid4(), Role.USER, uuid.uuid4())


def test_a_token_is_verified_once_and_its_expiry_checked_on_every_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[str] = []
    decode = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        decoded.append(token)
        return decode(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    principal = _principal()
    token = issue_access_token(principal, KEY, timedelta(seconds=60))
    assert read_access_token(token, KEY) == principal
    assert read_access_token(token, KEY) == principal
    assert decoded == [token]
    # Another key is another verification (and refused: the signature does not match).
    with pytest.raises(InvalidToken, match="invalid"):
        read_access_token(token, "x" * 32)
    # Time passes beyond the expiry: the known token is refused without decoding it again.
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(InvalidToken, match="expired"):
        read_access_token(token, KEY)
    assert decoded == [token, token]


def test_the_verified_tokens_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(security, "_VERIFIED_TOKENS", 3)
    monkeypatch.setattr(security, "_verified", OrderedDict())
    tokens = [issue_access_token(_principal(), KEY, timedelta(seconds=60)) for _ in range(5)]
    for token in tokens:
        read_access_token(token, KEY)
    assert [token for token, _ in security._verified] == tokens[2:]
