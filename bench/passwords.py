"""Password hashing: the project's argon2id parameters against pwdlib's recommended default.

Register and login each hash once, so this bounds sign-ups and sign-ins per core.
"""

from __future__ import annotations

import asyncio

from pwdlib import PasswordHash

from bench.timing import report, sample
from core.passwords import hash_password


async def main(runs: int = 20) -> None:
    default = PasswordHash.recommended()
    baseline = await sample(lambda: asyncio.to_thread(default.hash, "orbit-velvet-canyon-42"), runs)
    measured = await sample(lambda: hash_password("orbit-velvet-canyon-42"), runs)
    report("argon2id hash (project m=19MiB,t=2,p=1 vs pwdlib default)", baseline, measured)


if __name__ == "__main__":
    asyncio.run(main())
