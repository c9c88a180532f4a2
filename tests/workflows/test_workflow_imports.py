"""Workflow modules pull in no HTTP or SDK client, not even through the activities they name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

WORKFLOWS = sorted(
    p.stem for p in (Path(__file__).parents[2] / "workflows").glob("*.py") if p.stem != "__init__"
)
FORBIDDEN = {"stripe", "boto3", "botocore", "hvac", "httpx"}


def test_workflow_modules_import_no_client() -> None:
    # One fresh interpreter importing every workflow module: if their union is clean, each is.
    probe = (
        "import sys, importlib; "
        f"[importlib.import_module('workflows.' + m) for m in {WORKFLOWS!r}]; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {FORBIDDEN!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert len(WORKFLOWS) >= 5
    assert result.stdout.strip() == "[]", f"workflow modules import {result.stdout.strip()}"
