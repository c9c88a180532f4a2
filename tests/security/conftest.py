"""Fixtures of the security suites, and the figures they print at the end of the run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from core.settings import Settings


@dataclass
class Figures:
    """What a suite tried, counted so that it can be quoted."""

    suite: str
    tried: int = 0
    refused: int = 0
    accepted: int = 0
    server_errors: int = 0
    failures: list[str] = field(default_factory=list)

    def count(self, status: int) -> None:
        self.tried += 1
        if status >= 500:
            self.server_errors += 1
        elif status >= 400:
            self.refused += 1
        else:
            self.accepted += 1

    def line(self) -> str:
        return (
            f"{self.suite}: {self.tried} cases tried, {self.refused} refused (4xx), "
            f"{self.accepted} accepted, {self.server_errors} 5xx, "
            f"{len(self.failures)} contract failures"
        )


_FIGURES = "security figures"
_REPORTED: list[str] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """A test's figures; printed in the terminal summary (with or without ``-s``, and from
    every test process: they travel in the test's report)."""
    found = Figures(request.node.nodeid.split("::", 1)[-1])
    yield found
    request.node.user_properties.append((_FIGURES, found.line()))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        _REPORTED.extend(str(line) for name, line in report.user_properties if name == _FIGURES)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _REPORTED:
        return
    terminalreporter.section("security suites: figures")
    for line in _REPORTED:
        terminalreporter.write_line(line)


@dataclass
class Served:
    app: FastAPI
    client: httpx.AsyncClient


@pytest.fixture
async def served(
    settings: Settings, temporal_env: WorkflowEnvironment, engine: AsyncEngine, worker: Worker
) -> AsyncIterator[Served]:
    """The API in process with a real worker on the dev server, and the app itself."""
    # Webhooks configured, so that an unsigned event is refused (400) rather than unserved (503).
    settings = settings.model_copy(update={"stripe_webhook_secret": SecretStr("whsec_test")})
    app = create_app(settings, temporal_env.client, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Served(app, client)
