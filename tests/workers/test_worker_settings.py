"""How the worker is sized and how it stops, from the settings and the database pool."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import PollerBehaviorAutoscaling

from core.db import SessionFactory
from core.logging import TenantLogContext
from core.settings import Settings
from workers.main import build_worker


async def test_activity_slots_follow_the_database_pool(
    temporal_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    config = build_worker(temporal_env.client, sessions, settings).config()
    # SQLAlchemy's default pool: 5 connections plus 10 overflow, on SQLite and PostgreSQL.
    assert config.get("max_concurrent_activities") == 15
    assert config.get("graceful_shutdown_timeout") == timedelta(seconds=30)
    assert config.get("max_cached_workflows") == 500
    assert config.get("workflow_task_poller_behavior") == PollerBehaviorAutoscaling(maximum=10)
    assert config.get("activity_task_poller_behavior") == PollerBehaviorAutoscaling(maximum=10)
    assert [type(i) for i in config.get("interceptors", [])] == [TenantLogContext]


async def test_settings_override_the_sizes(
    temporal_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> None:
    tuned = settings.model_copy(
        update={
            "worker_max_concurrent_activities": 4,
            "worker_graceful_shutdown_seconds": 120,
            "worker_max_cached_workflows": 50,
        }
    )
    config = build_worker(temporal_env.client, sessions, tuned).config()
    assert config.get("max_concurrent_activities") == 4
    assert config.get("graceful_shutdown_timeout") == timedelta(minutes=2)
    assert config.get("max_cached_workflows") == 50


def test_settings_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIZ_WORKER_GRACEFUL_SHUTDOWN_SECONDS", "45")
    monkeypatch.setenv("BIZ_WORKER_METRICS_PORT", "0")
    settings = Settings(_env_file=None)
    assert settings.worker_graceful_shutdown_seconds == 45
    assert settings.worker_metrics_port == 0
