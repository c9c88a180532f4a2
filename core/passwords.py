"""Password hashing with argon2id, off the event loop."""

from __future__ import annotations

import asyncio

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

# OWASP's argon2id recommendation (19 MiB, 2 passes, 1 lane): ~23 ms on two cores.
_HASHER = PasswordHash((Argon2Hasher(memory_cost=19_456, time_cost=2, parallelism=1),))


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_HASHER.hash, password)


async def verify_password(password: str, stored: str) -> tuple[bool, str | None]:
    """Whether ``password`` matches; the second item is a new hash when parameters changed."""
    return await asyncio.to_thread(_HASHER.verify_and_update, password, stored)
