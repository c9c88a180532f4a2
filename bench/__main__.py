"""Run every benchmark: ``python -m bench`` (``make bench``)."""

from __future__ import annotations

import asyncio

from bench import codec, passwords


async def main() -> None:
    for module in (codec, passwords):
        await module.main()


asyncio.run(main())
