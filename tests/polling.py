"""Waiting in tests for what workflows do after an answer (projections, audit rows, e-mails)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], *, seconds: float = 15
) -> T:
    """What ``probe`` answers once ``check`` holds for it; fails after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        value = await probe()
        if check(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"still {value!r} after {seconds} s")
        await asyncio.sleep(0.05)
