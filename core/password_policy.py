"""The password policy: long enough, and not a common password in disguise."""

from __future__ import annotations

import re
from importlib import resources

MIN_LENGTH = 12
MAX_LENGTH = 128


def _load_common() -> frozenset[str]:
    text = resources.files("core").joinpath("common_passwords.txt").read_text()
    return frozenset(text.split())


# A password that is one of these with digits or symbols around it ("Password123!") is
# refused too.
COMMON = _load_common()


def _base_word(password: str) -> str:
    # Strip the decorations people add to meet composition rules.
    return re.sub(r"^[\d\W_]+|[\d\W_]+$", "", password.lower())


def problems(password: str, *, email: str = "", names: tuple[str, ...] = ()) -> list[str]:
    """Why ``password`` is refused; an empty list when it is acceptable."""
    found: list[str] = []
    if len(password) < MIN_LENGTH:
        found.append(f"must be at least {MIN_LENGTH} characters long")
    if len(password) > MAX_LENGTH:
        found.append(f"must be at most {MAX_LENGTH} characters long")
    lowered = password.lower()
    if lowered in COMMON or _base_word(password) in COMMON:
        found.append("is a commonly used password")
    elif len(set(lowered)) <= 3:
        found.append("repeats too few characters")
    personal = re.split(r"[\W_]+", " ".join([email.split("@")[0], *names]).lower())
    if any(len(word) >= 4 and word in lowered for word in personal):
        found.append("must not contain your e-mail name or company name")
    return found
