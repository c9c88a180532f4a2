"""TOTP replay guard and recovery codes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyotp

from core import mfa

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def test_current_code_is_accepted_once() -> None:
    secret = mfa.new_secret()
    code = pyotp.TOTP(secret).at(NOW)
    step = mfa.accepted_step(secret, code, None, NOW)
    assert step is not None
    assert mfa.accepted_step(secret, code, step, NOW) is None


def test_neighbouring_steps_allow_clock_drift_but_not_going_back() -> None:
    secret = mfa.new_secret()
    totp = pyotp.TOTP(secret)
    previous = totp.at(NOW - timedelta(seconds=30))
    later = totp.at(NOW + timedelta(seconds=30))
    step = mfa.accepted_step(secret, later, None, NOW)
    assert step is not None
    assert mfa.accepted_step(secret, previous, step, NOW) is None


def test_codes_with_a_leading_zero_and_malformed_codes() -> None:
    secret = mfa.new_secret()
    totp = pyotp.TOTP(secret)
    moment = next(
        NOW + timedelta(seconds=30 * n)
        for n in range(10_000)
        if totp.at(NOW + timedelta(seconds=30 * n)).startswith("0")
    )
    assert mfa.accepted_step(secret, totp.at(moment), None, moment) is not None
    for bad in ("", "12345", "1234567", "abcdef"):
        assert mfa.accepted_step(secret, bad, None, NOW) is None


def test_recovery_codes_are_unique_and_case_insensitive() -> None:
    codes = mfa.new_recovery_codes()
    assert len(set(codes)) == mfa.RECOVERY_CODE_COUNT
    assert mfa.recovery_digest(codes[0].upper()) == mfa.recovery_digest(f" {codes[0]} ")
