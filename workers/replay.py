"""Replay workflow histories against this code: ``python -m workers.replay HISTORY.json...``.

Before a deploy, or when a workflow fails with a non-determinism error, an operator downloads
the history (``temporal workflow show -w ID --output json > h.json``; the payloads may stay
encrypted) and replays it here with the worker's own workflows and data converter (keys from
``BIZ_CODEC_KEYS`` or the local secret store). Exit status 0: every history replays.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter
from temporalio.worker import Replayer

from core.settings import Settings
from core.temporal import data_converter, exit_without_teardown, load_codec_keys
from workers.registry import WORKFLOWS


async def replay(paths: Sequence[Path], converter: DataConverter) -> dict[Path, str | None]:
    """Each history's replay failure (``None`` when it replays)."""
    replayer = Replayer(workflows=WORKFLOWS, data_converter=converter)
    outcomes: dict[Path, str | None] = {}
    for path in paths:
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        failure = result.replay_failure
        outcomes[path] = None if failure is None else f"{type(failure).__name__}: {failure}"
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    paths = [Path(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print("usage: python -m workers.replay HISTORY.json...", file=sys.stderr)
        return 2
    settings = Settings()
    converter = data_converter(
        load_codec_keys(settings), accept_plaintext=settings.codec_accept_plaintext
    )
    outcomes = asyncio.run(replay(paths, converter))
    for path, failure in outcomes.items():
        print(f"{path}: {'ok' if failure is None else failure}")
    return 0 if all(failure is None for failure in outcomes.values()) else 1


if __name__ == "__main__":
    exit_without_teardown(main())
