"""Onboarding under load: the HTTP API against the raw Temporal client, many tenants at once
(issue 16, P1 and P2).

``python -m bench.onboarding_load [tenants] [concurrency] [--rounds R] [--profile DIR]
[--api-core]``
(default 100 tenants, 20 at a time, 2 rounds). One run starts ``bizosaas dev`` (``make run``:
the Temporal dev server, then the API under uvicorn and the worker, each its own process, on
the embedded defaults: SQLite, the local secret store) in a scratch directory on free ports,
and measures on that one stack:

(a) **raw SDK, the baseline**: the same ``OnboardingWorkflow`` driven by a Temporal client in
    this process, with the API's data converter (encrypted payloads): the four wizard steps
    (``save_step`` updates), ``submit``, the approver's ``decide`` update on the approval child,
    then the tenant's provisioning until the onboarding is ``approved``. Tenants and their
    workflows are created before the clock, as sign-up would have.
(b) **the API**: the same flow over HTTP (``PUT /onboarding/steps/{step}``, ``POST
    /onboarding/submit``, ``POST /approvals/{id}/decision`` by a super_admin with MFA),
    tenants registered and signed in through the API before the clock.
(c) **the API with sign-up**: (b) with ``POST /auth/register`` and ``POST /auth/login`` inside
    the clock.

``concurrency`` tenants run at a time, each with a frontend polling its state every 250 ms
(``handle.query`` / ``GET /onboarding``) from its first step until it is active. One approver
watches the pending queue every 250 ms and decides each new approval once: raw, a visibility
list (``BizProcess = 'approval' AND BizStatus = 'pending'``); through the API, ``GET
/approvals``. The worker and the dev server are the same processes for all three phases, and
a few tenants go through both drivers, untimed, before the first clock. Other people's work
shares this machine's cores, so each phase runs in ``--rounds`` turns (2) taking turns with
the others (raw, API, API with sign-up, raw, ...): a burst of other work falls on all three.

Why a real server in its own process and not the ASGI app in this one: the API's cost under
load includes uvicorn's HTTP handling and its own event loop competing with the worker and
the dev server for the cores, as in production; and py-spy needs the API's own pid.

The client is aiohttp (installed with the dev extras) over loopback: it shares the cores with
what it measures, where browsers would cost the server nothing, and it costs about 1 ms of CPU
per request here where httpx costs 4 to 5 ms (its CPU is the ``bench`` column). Sign-up rate
limits are raised for the run (``BIZ_REGISTER_RATE_*``, ``BIZ_LOGIN_RATE_PER_IP``): every
tenant signs up from 127.0.0.1. A 503 (SQLite's writer lock timed out under concurrent
sign-ups) or a 504 is answered as the API asks: the same request again after ``Retry-After``
(changes with the same ``Idempotency-Key``); they are counted.

Printed: tenants/s of each and the ratios (b)/(a), (c)/(a) against P1's 0.7 and 0.5; the step
update's p50 / p99 through the API against raw (P2: the API's p99 at most 1.25 times raw's);
CPU milliseconds per tenant of each process (on a shared machine, the steadier figure).
``--api-core`` puts the API alone on the last core and everything else (the worker, the dev
server, this process's clients) on the others, as production's advice has it: the raw
baseline then runs on the remaining cores too, and the comparison shows what the API costs when
it does not queue behind them.

``--profile DIR`` also records py-spy (``--gil``, raw format) of the API and the worker during
each phase and prints the busiest functions; its sampling costs CPU, so take figures from a
run without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from api.routers.onboarding import start_onboarding
from bench.profiling import Recording, summary
from bench.stack import Stack, running
from bench.timing import percentile, report
from core import search
from core.db import create_engine, session_factory
from models.approval import ApprovalStatus, Decision, Verdict
from models.onboarding import OnboardingState, OnboardingStep, StepData, Submission
from models.tenant import TenantStatus
from models.user import Role
from tests.api.flows import wizard
from tests.factories import Member, member
from workflows import approval
from workflows.approval import ApprovalWorkflow
from workflows.onboarding import OnboardingWorkflow, workflow_id

POLL_SECONDS = 0.25  # the frontends' and the approver's polling interval
CHANGES, SIGN_UP = 5, 2  # requests per tenant: four steps and submit; register and login
WARM_UP = 2  # tenants through each driver before the clocks
PASSWORD = "orbit-velvet-canyon-42"  # noqa: S105 - the load test's applicants
RETRY_STATUSES = (503, 504)  # the workflow or Temporal did not answer in time: retry
TARGETS = {"api": 0.7, "api+signup": 0.5}  # P1
P99_TARGET = 1.25  # P2: API p99 / raw p99 of the step update
PENDING_APPROVALS = (
    f"{search.BIZ_PROCESS.name} = '{approval.PROCESS}' "
    f"AND {search.BIZ_STATUS.name} = '{ApprovalStatus.PENDING.value}'"
)


@dataclass
class Applicant:
    """One tenant in the run: its ids, and its access token when it goes through the API."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID
    legal_name: str
    headers: dict[str, str] = field(default_factory=dict)


class ReadFailed(Exception):
    """A read that a frontend would simply repeat (a timeout, Temporal busy)."""


class Driver(Protocol):
    """One way of driving an onboarding: the raw client or the HTTP API."""

    async def status(self, who: Applicant) -> str: ...
    async def save_step(self, who: Applicant, step: str, data: dict[str, Any]) -> None: ...
    async def submit(self, who: Applicant) -> None: ...
    async def pending_approvals(self) -> list[str]: ...
    async def decide(self, approval: str) -> None: ...


class RawDriver:
    """The workflows through a Temporal client, with what the API would send."""

    def __init__(self, client: Client, approver: Member) -> None:
        self.client, self.approver = client, approver

    async def status(self, who: Applicant) -> str:
        handle = self.client.get_workflow_handle_for(
            OnboardingWorkflow.run, workflow_id(who.tenant_id)
        )
        try:
            state: OnboardingState = await handle.query(OnboardingWorkflow.state)
        except RPCError as err:
            if err.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.UNAVAILABLE):
                raise ReadFailed(err.message) from None
            raise
        return state.status.value

    async def save_step(self, who: Applicant, step: str, data: dict[str, Any]) -> None:
        handle = self.client.get_workflow_handle(workflow_id(who.tenant_id))
        step_data = StepData(step=OnboardingStep(step), data=data)
        await handle.execute_update(OnboardingWorkflow.save_step, step_data)

    async def submit(self, who: Applicant) -> None:
        handle = self.client.get_workflow_handle(workflow_id(who.tenant_id))
        await handle.execute_update(OnboardingWorkflow.submit, Submission(submitted_by=who.user_id))

    async def pending_approvals(self) -> list[str]:
        return [run.id async for run in self.client.list_workflows(PENDING_APPROVALS)]

    async def decide(self, approval: str) -> None:
        decision = Decision(
            decision=Verdict.APPROVE,
            decided_by=self.approver.user_id,
            decider_role=Role.SUPER_ADMIN,
        )
        handle = self.client.get_workflow_handle(approval)
        await handle.execute_update(ApprovalWorkflow.decide, decision)


class ApiDriver:
    """The same over HTTP, as the frontend and an approver send it: every change carries an
    ``Idempotency-Key`` and is sent again with it after a 503 or 504, as the API asks."""

    def __init__(self, http: aiohttp.ClientSession, approver: Member) -> None:
        self.http, self.approver = http, approver
        self.retried: Counter[str] = Counter()  # why requests were sent again

    async def _request(
        self, method: str, path: str, headers: dict[str, str], body: Any = None
    ) -> tuple[int, Any]:
        async with self.http.request(method, path, json=body, headers=headers) as response:
            text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text

    async def _read(self, path: str, headers: dict[str, str]) -> Any:
        try:
            status, body = await self._request("GET", path, headers)
        except aiohttp.ClientConnectionError as exc:
            raise ReadFailed(str(exc)) from None
        if status in RETRY_STATUSES:
            raise ReadFailed(str(body))
        _check(f"GET {path}", status, body, 200)
        return body

    async def status(self, who: Applicant) -> str:
        state = await self._read("/api/v1/onboarding", who.headers)
        return str(state["status"])

    async def save_step(self, who: Applicant, step: str, data: dict[str, Any]) -> None:
        await self._change("PUT", f"/api/v1/onboarding/steps/{step}", who.headers, data, 200)

    async def submit(self, who: Applicant) -> None:
        await self._change("POST", "/api/v1/onboarding/submit", who.headers, None, 202)

    async def pending_approvals(self) -> list[str]:
        found, cursor = [], ""
        while True:
            query = f"status=pending&limit=200{f'&cursor={cursor}' if cursor else ''}"
            page = await self._read(f"/api/v1/approvals?{query}", self.approver.headers)
            found += [item["approval_id"] for item in page["items"]]
            if page["next_cursor"] is None:
                return found
            cursor = page["next_cursor"]

    async def decide(self, approval: str) -> None:
        path = f"/api/v1/approvals/{approval}/decision"
        await self._change("POST", path, self.approver.headers, {"decision": "approve"}, 200)

    async def _change(
        self, method: str, path: str, headers: dict[str, str], body: Any, expected: int
    ) -> None:
        headers = headers | {"Idempotency-Key": uuid.uuid4().hex}
        while True:
            try:
                status, answer = await self._request(method, path, headers, body)
            except aiohttp.ClientConnectionError:
                # A kept-alive connection the server closed as it was reused (uvicorn's
                # keep-alive timeout): the key makes sending it again safe.
                self.retried["connection closed"] += 1
                continue
            if status not in RETRY_STATUSES:
                _check(f"{method} {path}", status, answer, expected)
                return
            self.retried[f"{method} {status}"] += 1

    async def sign_up(self, legal_name: str) -> Applicant:
        """Register (which starts the onboarding) and sign in, as a new user does."""
        email = f"owner-{uuid.uuid4().hex[:12]}@example.com"
        account = {"email": email, "password": PASSWORD}
        about = {"full_name": "Ada Owner", "company_name": legal_name}
        ids = await self._unless_busy("/api/v1/auth/register", account | about, 201)
        tokens = await self._unless_busy("/api/v1/auth/login", account, 200)
        return Applicant(
            uuid.UUID(ids["tenant_id"]),
            uuid.UUID(ids["user_id"]),
            legal_name,
            {"Authorization": f"Bearer {tokens['access_token']}"},
        )

    async def _unless_busy(self, path: str, body: dict[str, str], expected: int) -> Any:
        """POST ``body``; after a 503 (SQLite's writer lock timed out: nothing was written),
        again once the ``Retry-After`` has passed, as the problem asks."""
        while True:
            async with self.http.post(path, json=body) as response:
                answer = await response.json(content_type=None)
                wait = float(response.headers.get("Retry-After", "1"))
            if response.status != 503:
                _check(f"POST {path}", response.status, answer, expected)
                return answer
            self.retried[f"POST {path.rsplit('/', 1)[-1]} 503"] += 1
            await asyncio.sleep(wait)


def _check(what: str, status: int, body: Any, expected: int) -> None:
    if status != expected:
        raise RuntimeError(f"{what}: {status} {str(body)[:500]}")


@dataclass
class Tally:
    """What one phase's tenants and approver saw."""

    step_updates: list[float] = field(default_factory=list)  # seconds of each save_step
    polls: int = 0  # the frontends' state reads
    failed_polls: int = 0  # timed out or unavailable (a frontend polls again)
    queue_reads: int = 0  # the approver's
    decisions: int = 0


@dataclass
class Phase:
    """One way of onboarding, summed over the rounds it ran in."""

    name: str
    tenants: int = 0
    seconds: float = 0.0
    tally: Tally = field(default_factory=Tally)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process, timed parts
    retried: Counter[str] = field(default_factory=Counter)  # requests sent again, and why

    @property
    def step_updates(self) -> list[float]:
        return self.tally.step_updates

    @property
    def rate(self) -> float:
        return self.tenants / self.seconds


async def every_poll(
    read: Callable[[], Awaitable[bool]], tally: Tally, stop: asyncio.Event | None = None
) -> None:
    """Call ``read`` every ``POLL_SECONDS`` (the next one when the last has answered) until it
    returns true or ``stop`` is set."""
    stop = stop or asyncio.Event()
    while not stop.is_set():
        due = time.perf_counter() + POLL_SECONDS
        try:
            if await read():
                return
        except ReadFailed:
            tally.failed_polls += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, due - time.perf_counter()))


async def onboard(
    driver: Driver, tally: Tally, who: Applicant | Callable[[], Awaitable[Applicant]]
) -> None:
    """One tenant from the first wizard step (or from sign-up, when ``who`` signs up) to
    ``approved``, its frontend polling from the first step on."""
    applicant = who if isinstance(who, Applicant) else await who()

    async def approved() -> bool:
        tally.polls += 1
        return await driver.status(applicant) == "approved"

    frontend = asyncio.create_task(every_poll(approved, tally))
    try:
        for step, data in wizard(applicant.legal_name).items():
            started = time.perf_counter()
            await driver.save_step(applicant, step, data)
            tally.step_updates.append(time.perf_counter() - started)
        await driver.submit(applicant)
        await frontend
    finally:
        frontend.cancel()


async def approve_all(driver: Driver, tally: Tally, done: asyncio.Event) -> None:
    """The approver: reads the pending queue every ``POLL_SECONDS`` and decides each new
    approval once, until ``done``."""
    decided: set[str] = set()
    async with asyncio.TaskGroup() as decisions:

        async def read_queue() -> bool:
            tally.queue_reads += 1
            for approval_id in await driver.pending_approvals():
                if approval_id not in decided:
                    decided.add(approval_id)
                    tally.decisions += 1
                    decisions.create_task(driver.decide(approval_id))
            return False

        await every_poll(read_queue, tally, done)


async def run_tenants(
    driver: Driver, tally: Tally, concurrency: int, tenants: Sequence[Callable[[], Awaitable[Any]]]
) -> None:
    """The tenants, ``concurrency`` at a time, and the approver; the first failure ends all."""
    done = asyncio.Event()
    gate = asyncio.Semaphore(concurrency)

    async def tenant(job: Callable[[], Awaitable[Any]]) -> None:
        async with gate:
            await job()

    async def all_tenants() -> None:
        try:
            await asyncio.gather(*(tenant(job) for job in tenants))
        finally:
            done.set()

    async with asyncio.TaskGroup() as group:
        group.create_task(approve_all(driver, tally, done))
        group.create_task(all_tenants())


async def gather_limited(concurrency: int, jobs: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def run(job: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await job()

    return await asyncio.gather(*(run(job) for job in jobs))


@contextlib.contextmanager
def profiled(stack: Stack, directory: Path | None, phase: str) -> Iterator[None]:
    """py-spy on the API and the worker while the block runs, when ``directory`` is given."""
    if directory is None:
        yield
        return
    with contextlib.ExitStack() as recordings:
        for name in ("api", "worker"):
            recordings.enter_context(
                Recording(stack.pids[name], directory / f"{phase}-{name}.txt", gil=True)
            )
        yield


async def timed(
    stack: Stack, phase: Phase, tenants: int, run: Callable[[Tally], Awaitable[None]]
) -> None:
    """Run ``tenants`` of ``phase`` on the clock, adding their time and CPU to it."""
    before = stack.cpu()
    started = time.perf_counter()
    await run(phase.tally)
    phase.seconds += time.perf_counter() - started
    phase.tenants += tenants
    for process, seconds in stack.cpu().items():
        phase.cpu[process] = phase.cpu.get(process, 0.0) + seconds - before[process]


def legal_name(phase: str, n: int) -> str:
    # Unique words: the similar-tenant check finds no other tenant, as for real newcomers.
    return f"Load{phase}{n}x{uuid.uuid4().hex[:8]} GmbH"


async def measure(
    stack: Stack, tenants: int, concurrency: int, rounds: int, profile: Path | None
) -> list[Phase]:
    """The three phases, each run in ``rounds`` slices of the tenants taking turns (raw, API,
    API with sign-up, raw, ...), so that a burst of other work on the machine falls on all
    three alike."""
    settings = stack.settings
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    client = await stack.raw_client()
    http = aiohttp.ClientSession(
        stack.api_url,
        connector=aiohttp.TCPConnector(limit=4 * concurrency),
        timeout=aiohttp.ClientTimeout(total=120),
    )
    raw_phase, api_phase = Phase("raw SDK (baseline)"), Phase("API")
    signup_phase = Phase("API with register + login")
    try:
        approver = await member(sessions, settings, Role.SUPER_ADMIN, mfa_enabled=True)
        raw, api = RawDriver(client, approver), ApiDriver(http, approver)

        async def applicants(count: int, tag: str) -> list[Applicant]:
            """Raw tenants as after sign-up: the tenant, its admin and its onboarding."""
            made = []
            for n in range(count):
                admin = await member(sessions, settings, status=TenantStatus.ONBOARDING)
                await start_onboarding(client, settings, admin.tenant_id)
                made.append(Applicant(admin.tenant_id, admin.user_id, legal_name(tag, n)))
            return made

        # Untimed, through both: the worker's and the API's caches are warm before any clock.
        warm_raw = await applicants(WARM_UP, "warm")
        warm_api = [await api.sign_up(legal_name("warm", n)) for n in range(WARM_UP)]
        await run_tenants(
            raw, Tally(), WARM_UP, [partial(onboard, raw, Tally(), w) for w in warm_raw]
        )
        await run_tenants(
            api, Tally(), WARM_UP, [partial(onboard, api, Tally(), w) for w in warm_api]
        )

        for turn, size in enumerate(_slices(tenants, rounds)):
            # (a) raw, tenants and their onboarding made before the clock.
            ready = await applicants(size, f"raw{turn}")

            async def raw_run(tally: Tally, ready: list[Applicant] = ready) -> None:
                await run_tenants(
                    raw, tally, concurrency, [partial(onboard, raw, tally, who) for who in ready]
                )

            with profiled(stack, profile, f"raw{turn}"):
                await timed(stack, raw_phase, size, raw_run)

            # (b) the API, tenants signed up and in before the clock.
            signed_up = await gather_limited(
                concurrency,
                [partial(api.sign_up, legal_name(f"api{turn}", n)) for n in range(size)],
            )

            async def api_run(tally: Tally, ready: list[Applicant] = signed_up) -> None:
                await run_tenants(
                    api, tally, concurrency, [partial(onboard, api, tally, who) for who in ready]
                )

            # (c) the API with sign-up and sign-in inside the clock.
            async def signup_run(tally: Tally, turn: int = turn, size: int = size) -> None:
                names = [legal_name(f"signup{turn}", n) for n in range(size)]
                jobs = [partial(onboard, api, tally, partial(api.sign_up, name)) for name in names]
                await run_tenants(api, tally, concurrency, jobs)

            for phase, tag, run in (
                (api_phase, "api", api_run),
                (signup_phase, "signup", signup_run),
            ):
                retried = api.retried.copy()
                with profiled(stack, profile, f"{tag}{turn}"):
                    await timed(stack, phase, size, run)
                phase.retried += api.retried - retried
        return [raw_phase, api_phase, signup_phase]
    finally:
        await http.close()
        await engine.dispose()


def _slices(total: int, rounds: int) -> list[int]:
    """``total`` split into ``rounds`` near-equal parts."""
    return [total // rounds + (1 if turn < total % rounds else 0) for turn in range(rounds)]


def print_results(
    phases: list[Phase], concurrency: int, rounds: int, loads: tuple[float, float]
) -> None:
    raw, api, signup = phases
    print(
        f"onboarding under load: {raw.tenants} tenants per phase in {rounds} turns, "
        f"{concurrency} at a time, frontends and an approver polling every "
        f"{POLL_SECONDS * 1e3:.0f} ms; load average {loads[0]:.1f} before, {loads[1]:.1f} after"
    )
    for phase in phases:
        ratio = "" if phase is raw else f" | {phase.rate / raw.rate:.2f}x the raw SDK"
        cpu = ", ".join(f"{k} {v / phase.tenants * 1e3:.0f}" for k, v in phase.cpu.items())
        print(
            f"{phase.name}: {phase.seconds:.1f} s, {phase.rate:.2f} tenants/s{ratio} "
            f"(CPU ms per tenant: {cpu}; {phase.tally.polls} polls, "
            f"{phase.tally.failed_polls} failed; {phase.tally.queue_reads} queue reads, "
            f"{phase.tally.decisions} decisions; sent again: {dict(phase.retried) or 'none'})"
        )
    for phase, per_tenant in ((api, CHANGES), (signup, CHANGES + SIGN_UP)):
        tally = phase.tally
        requests = tally.polls + tally.queue_reads + tally.decisions + per_tenant * phase.tenants
        print(
            f"{phase.name}: the API used {phase.cpu['api'] / requests * 1e3:.1f} ms of CPU per "
            f"request ({requests} requests)"
        )
    for phase, key in ((api, "api"), (signup, "api+signup")):
        verdict = "within" if phase.rate / raw.rate >= TARGETS[key] else "BELOW"
        print(
            f"P1 {phase.name}: {phase.rate / raw.rate:.2f}x, {verdict} the {TARGETS[key]}x target"
        )
    for phase in (api, signup):
        report(
            f"step update under load (raw vs {phase.name})", raw.step_updates, phase.step_updates
        )
    r99, a99 = percentile(raw.step_updates, 99), percentile(api.step_updates, 99)
    verdict = "within" if a99 <= P99_TARGET * r99 else "OVER"
    print(
        f"P2 step update p99: API {a99 * 1e3:.0f} ms vs raw {r99 * 1e3:.0f} ms = "
        f"{a99 / r99:.2f}x, {verdict} the {P99_TARGET}x target (p50 "
        f"{statistics.median(api.step_updates) * 1e3:.0f} vs "
        f"{statistics.median(raw.step_updates) * 1e3:.0f} ms, p90 "
        f"{percentile(api.step_updates, 90) * 1e3:.0f} vs "
        f"{percentile(raw.step_updates, 90) * 1e3:.0f} ms, max "
        f"{max(api.step_updates) * 1e3:.0f} vs {max(raw.step_updates) * 1e3:.0f} ms)"
    )


async def main(
    tenants: int = 100,
    concurrency: int = 20,
    rounds: int = 2,
    profile: Path | None = None,
    api_core: bool = False,
) -> None:
    async with running("bizosaas-load-") as stack:
        if api_core:
            stack.give_api_its_core()
        before = os.getloadavg()[0]
        phases = await measure(stack, tenants, concurrency, rounds, profile)
        loads = (before, os.getloadavg()[0])
    if api_core:
        print("the API alone on the last core; the worker, Temporal and the clients on the rest")
    print_results(phases, concurrency, rounds, loads)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.onboarding_load")
    parser.add_argument("tenants", nargs="?", type=int, default=100)
    parser.add_argument("concurrency", nargs="?", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="turns each phase takes (2)")
    parser.add_argument("--profile", type=Path, help="record py-spy of the API and the worker here")
    parser.add_argument(
        "--api-core",
        action="store_true",
        help="the API alone on the last core; the worker, Temporal and the clients on the rest",
    )
    arguments = parser.parse_args()
    if arguments.profile is not None:
        arguments.profile.mkdir(parents=True, exist_ok=True)
    asyncio.run(
        main(
            arguments.tenants,
            arguments.concurrency,
            arguments.rounds,
            arguments.profile,
            arguments.api_core,
        )
    )
    if arguments.profile is not None:
        for path in sorted(arguments.profile.glob("*.txt")):
            print(summary(path, 25))
