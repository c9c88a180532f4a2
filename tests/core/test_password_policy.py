"""The password policy."""

from __future__ import annotations

import pytest

from core.password_policy import problems


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short1!", "at least 12"),
        ("x" * 129, "at most 128"),
        ("Password2024!", "commonly used"),
        ("!!qwertyuiop!!", "commonly used"),
        ("abababababab", "too few"),
        ("ada.lovelace-secure-99", "e-mail name or company"),
        ("northwind-blue-sky-7", "e-mail name or company"),
    ],
)
def test_refused(password: str, reason: str) -> None:
    found = problems(password, email="ada.lovelace@example.com", names=("Northwind Digital",))
    assert any(reason in problem for problem in found), found


def test_a_long_unusual_passphrase_passes() -> None:
    assert problems("orbit-velvet-canyon-42", email="ada@example.com", names=("Acme",)) == []
