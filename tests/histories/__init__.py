"""Recorded workflow histories: what running workflows look like to the code that replays them.

Each ``*.json`` file here is one run's event history, fetched with ``fetch_history()`` and saved
with ``to_json()`` by the scenarios in :mod:`tests.histories.scenarios` (``make histories``).
``tests/workflows/test_replay.py`` replays every one of them against the current workflow code.

The payloads are encrypted, as in production, by the project's own data converter, with
:data:`TEST_CODEC_KEYS`: a key made for these files and published with them. It protects
nothing and must never be configured anywhere (``BIZ_CODEC_KEYS``); the histories hold only
made-up test data.
"""

from __future__ import annotations

import base64
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter

from core.codec import parse_keys
from core.temporal import data_converter

HISTORIES = Path(__file__).resolve().parent

# The TEST key of the committed histories (kid ``replay-test``): public, never a real key.
TEST_CODEC_KEYS = "replay-test:" + base64.b64encode(b"bizosaas-replay-TEST-KEY-no-use!").decode()


def replay_converter() -> DataConverter:
    """The project's data converter with the histories' test key."""
    return data_converter(parse_keys(TEST_CODEC_KEYS))


def history_files() -> list[Path]:
    """Every committed history, by name."""
    return sorted(HISTORIES.glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    """A committed history; its file name stands in for the workflow id."""
    return WorkflowHistory.from_json(path.stem, path.read_text())


def workflow_type(history: WorkflowHistory) -> str:
    """The workflow type the history's run started as (its first event)."""
    started = history.events[0].workflow_execution_started_event_attributes
    return str(started.workflow_type.name)
