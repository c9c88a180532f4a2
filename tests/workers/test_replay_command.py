"""The operator's replay command: a downloaded history replays against this code, or says why
not (exit status 1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.histories import HISTORIES, TEST_CODEC_KEYS

ROOT = Path(__file__).resolve().parents[2]


def _replay(*paths: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BIZ_CODEC_KEYS": TEST_CODEC_KEYS, "BIZ_DATA_DIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "workers.replay", *map(str, paths)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_committed_histories_replay(tmp_path: Path) -> None:
    paths = [HISTORIES / "onboarding-approved.json", HISTORIES / "billing-suspended.json"]
    done = _replay(*paths, tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": ok") == 2


def test_a_history_that_no_longer_fits_fails_the_command(tmp_path: Path) -> None:
    history = json.loads((HISTORIES / "audit-verification-intact.json").read_text())
    # The run as recorded, but claiming to be another workflow type's history.
    for event in history["events"]:
        attributes = event.get("workflowExecutionStartedEventAttributes")
        if attributes:
            attributes["workflowType"]["name"] = "PasswordResetWorkflow"
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(history))
    done = _replay(edited, tmp_path=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "edited.json" in done.stdout
    assert ": ok" not in done.stdout
