"""Cost of encrypting every payload: the project's converter against the plain pydantic one."""

from __future__ import annotations

import asyncio
import uuid

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter

from bench.timing import report, sample
from core.codec import generate_key_spec, parse_keys
from core.temporal import data_converter
from models.email import EmailMessage

BATCH = 100


def _batch() -> list[EmailMessage]:
    return [
        EmailMessage(
            idempotency_key=f"welcome:{uuid.uuid4()}",
            to=f"user{n}@example.com",
            subject="Welcome to BizOSaaS",
            body="Your workspace is ready. " * 20,
        )
        for n in range(BATCH)
    ]


async def _round_trip(converter: DataConverter, values: list[EmailMessage]) -> None:
    payloads = await converter.encode(values)
    await converter.decode(payloads, [EmailMessage] * len(values))


async def main(runs: int = 200) -> None:
    values = _batch()
    encrypted = data_converter(parse_keys(generate_key_spec()))
    baseline = await sample(lambda: _round_trip(pydantic_data_converter, values), runs)
    measured = await sample(lambda: _round_trip(encrypted, values), runs)
    report(f"payload round trip x{BATCH} (AES-GCM codec vs plain)", baseline, measured)


if __name__ == "__main__":
    asyncio.run(main())
