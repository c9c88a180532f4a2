"""Run every benchmark: ``python -m bench`` (``make bench``)."""

from __future__ import annotations

import asyncio

from bench import api_overhead, codec, passwords


async def main() -> None:
    for module in (codec, passwords, api_overhead):
        await module.main()


asyncio.run(main())
