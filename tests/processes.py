"""A ``bizosaas worker`` in a process of its own, for tests that kill it mid-flight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from core.settings import Settings


def worker_process(
    settings: Settings, address: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A worker on the test's task queue, database, data directory and keys (``env`` adds
    settings); its stderr goes to ``log``."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BIZ_")} | {
        "BIZ_DATA_DIR": str(settings.data_dir),
        "BIZ_DATABASE_URL": settings.database_url,
        "BIZ_CODEC_KEYS": settings.codec_keys.get_secret_value() if settings.codec_keys else "",
        "BIZ_TEMPORAL_ADDRESS": address,
        "BIZ_TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
        "BIZ_WORKER_METRICS_PORT": "0",
        "BIZ_LOG_LEVEL": "WARNING",
        "BIZ_CONNECTOR_RATE_LIMITS": json.dumps(settings.connector_rate_limits),
        **(env or {}),
    }
    if settings.jwt_secret is not None:
        environment["BIZ_JWT_SECRET"] = settings.jwt_secret.get_secret_value()
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "core.cli", "worker"],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
