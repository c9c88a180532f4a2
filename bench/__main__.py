"""Run every benchmark, each at a size that fits about six minutes in all on 2 cores:
``python -m bench`` (``make bench``).

Each prints its ratios against a baseline measured in its own run. The figures in
``bench/RESULTS.md`` were taken at each module's own defaults (``python -m bench.<module>``),
which take longer and vary less. The approvals queue needs PostgreSQL
(``BIZ_BENCH_POSTGRES_URL``); without one it is skipped, and says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from bench import (
    api_overhead,
    approvals_queue,
    codec,
    idle_billing,
    onboarding_load,
    passwords,
    startup,
    sync,
)

RUNS: list[tuple[str, Callable[[], Awaitable[None]]]] = [
    ("the codec", codec.main),
    ("password hashing", passwords.main),
    ("the API's overhead per call (P2)", lambda: api_overhead.main(runs=100)),
    ("onboarding under load (P1, P2)", lambda: onboarding_load.main(20, 10, rounds=1)),
    ("the approvals queue (P3)", approvals_queue.main),
    ("idle billing workflows (P4)", lambda: idle_billing.main(500, 30)),
    ("connector sync (P5)", lambda: sync.main(1_000)),
    ("start-up (P6)", lambda: startup.main(2)),
]


async def main() -> None:
    for name, run in RUNS:
        print(f"\n== {name}", flush=True)
        started = time.perf_counter()
        try:
            await run()
        except OSError as exc:
            if run is not approvals_queue.main:
                raise
            print(f"skipped: no PostgreSQL at {approvals_queue.ADMIN_URL} ({exc})")
        print(f"({time.perf_counter() - started:.0f} s)", flush=True)


asyncio.run(main())
